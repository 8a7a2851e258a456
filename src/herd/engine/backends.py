"""The attention backends by name, and the choice `attention_backend=auto` makes."""

import torch

from herd.engine import triton_attention
from herd.engine.attention import AttentionBackend, TorchAttention
from herd.engine.cpu_paged_decode import CpuAttention
from herd.engine.flex_attention import FlexAttention
from herd.engine.triton_attention import TritonAttention

BACKENDS: dict[str, type[AttentionBackend]] = {
    "torch": TorchAttention,
    "flex": FlexAttention,
    "cpu": CpuAttention,
    "triton": TritonAttention,
}


def get_backend(name: str, block_size: int, device: torch.device) -> AttentionBackend:
    """`auto`: on CUDA the Triton kernels (one launch for the step's decodes, one for its prefill
    chunks, each program on its own sequence's blocks), FlexAttention where Triton is missing;
    on CPU the C++ paged kernels (`cpu`, when they build; eager flex is unfused and measured far
    slower, fast-path.md); TorchAttention elsewhere."""
    if name == "auto":
        cuda = "flex" if triton_attention.unusable(device) else "triton"
        name = {"cuda": cuda, "cpu": "cpu"}.get(device.type, "torch")
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    if name == "triton" and (why := triton_attention.unusable(device)):
        raise ValueError(f"attention backend 'triton' cannot run here: {why}")
    return BACKENDS[name](block_size)
