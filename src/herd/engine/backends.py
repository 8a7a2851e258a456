"""The attention backends by name, and the choice `attention_backend=auto` makes."""

import torch

from herd.engine.attention import AttentionBackend, TorchAttention
from herd.engine.cpu_paged_decode import CpuAttention
from herd.engine.flex_attention import FlexAttention

BACKENDS: dict[str, type[AttentionBackend]] = {
    "torch": TorchAttention,
    "flex": FlexAttention,
    "cpu": CpuAttention,
}


def get_backend(name: str, block_size: int, device: torch.device) -> AttentionBackend:
    """`auto`: FlexAttention on CUDA (one call per step, no gathered context), on CPU the C++
    paged decode kernel (`cpu`, when it builds; eager flex is unfused and measured far slower,
    fast-path.md), TorchAttention elsewhere."""
    if name == "auto":
        name = {"cuda": "flex", "cpu": "cpu"}.get(device.type, "torch")
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](block_size)
