"""Counts the device kernels one eager batch-1 decode step launches, per decoder layer: torch ops
that run a kernel (views and other metadata ops left out) plus Triton launches. On a GPU each is a
launch of a few microseconds even inside a CUDA graph, so at batch 1 the count is part of the
step's time. Runs on CPU (Triton under its interpreter; kernel counts do not depend on sizes):

    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/step_kernels.py

Rows: the torch modules with TorchAttention (herd's CUDA step before the Triton backends), with
TritonAttention, and with the Triton layer ops too (the CUDA default now); and the fp8 linear's
activation quantisation, torch's vs the Triton kernel, per linear.
"""

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from herd.engine import triton_attention, triton_layer_ops
from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.triton_attention import TritonAttention
from herd.model.config import ModelConfig
from herd.model.demo import write_demo_model
from herd.model.loader import load_model
from herd.model.quant import Fp8Linear, fp8_scaled_mm, quantize_rows

# ops that only make views or read metadata: no kernel on a GPU
NO_KERNEL = {
    "view", "_unsafe_view", "reshape", "split", "split_with_sizes", "slice", "select", "t",
    "transpose", "unsqueeze", "squeeze", "expand", "as_strided", "alias", "detach", "permute",
    "unbind", "chunk", "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided",
    "_reshape_alias", "is_same_size", "_local_scalar_dense", "item",
}  # fmt: skip
LAYERS, CONTEXT = 2, 128
ATTENTION_KERNELS = ("paged_attention", "merge_splits", "store_kv")
LAYER_KERNELS = ("add_rmsnorm", "silu_and_mul", "rope", "quantize_fp8")


class Count(TorchDispatchMode):
    """aten ops that launch a kernel, by name (not those the interpreter runs for a kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name not in NO_KERNEL and not self.paused:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class Launches:
    """Counts launches of the named Triton kernels of each (namespace, names) while active;
    `ops`' counting pauses inside them."""

    def __init__(self, ops: Count, kernels: list) -> None:
        self.ops, self.kernels, self.count, self.saved = ops, kernels, 0, []

    def __enter__(self):
        for space, names in self.kernels:
            for name in names:
                kernel = getattr(space, name)
                self.saved.append((space, name, kernel))
                setattr(space, name, _Counted(kernel, self))
        return self

    def __exit__(self, *exc) -> None:
        for space, name, kernel in self.saved:
            setattr(space, name, kernel)


class _Counted:
    def __init__(self, kernel, launches: Launches) -> None:
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.count += 1
            self.launches.ops.paused = True
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                self.launches.ops.paused = False

        return launch


def decode_step(model, backend, cfg: ModelConfig) -> dict:
    """Kernels of one decode token at position CONTEXT - 1, all layers, per layer."""
    bs, hkv, d = 16, cfg.num_key_value_heads, cfg.head_dim
    blocks = -(-CONTEXT // bs)
    cache = torch.zeros(LAYERS, 2, blocks, bs, hkv, d, dtype=torch.bfloat16)
    meta = AttentionMetadata.from_tables([list(range(blocks))], [1], [CONTEXT], 1, bs)

    def attend(layer, q, k, v):
        return backend.forward(q, k, v, cache[layer, 0], cache[layer, 1], meta)

    ids, pos = torch.tensor([7]), torch.tensor([CONTEXT - 1])
    kernels = [(triton_attention.kernels(), ATTENTION_KERNELS)]
    kernels.append((triton_layer_ops._get(), LAYER_KERNELS))
    with torch.inference_mode(), Count() as ops, Launches(ops, kernels) as triton:
        model.model(ids, pos, attend)  # the decoder alone: embeddings, layers, final norm
    total = sum(ops.ops.values()) + triton.count
    return {"per_layer": total / LAYERS, "torch_ops": dict(ops.ops), "triton": triton.count}


def quantizer_kernels() -> dict:
    """Kernels of one fp8 linear's activation quantisation and `_scaled_mm`, torch vs Triton."""
    lin = Fp8Linear.from_float(torch.nn.Linear(64, 32, bias=False))
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    out = {}
    for name, quantize in (("torch", quantize_rows), ("triton", triton_layer_ops.quantize_fp8)):
        with Count() as ops, Launches(ops, [(triton_layer_ops._get(), LAYER_KERNELS)]) as triton:
            fp8_scaled_mm(x, lin.weight, lin.weight_scale, quantize)
        out[name] = sum(ops.ops.values()) + triton.count
    return out


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (the Triton kernels run under the interpreter)")
    d = Path(tempfile.mkdtemp(prefix="herd-step-kernels-"))
    write_demo_model(d, num_hidden_layers=LAYERS, hidden_size=256, intermediate_size=512,
                     num_attention_heads=8, num_key_value_heads=2)  # fmt: skip
    cfg = ModelConfig.from_path(d)
    torch_model = load_model(d, cfg, torch.bfloat16, torch.device("cpu"))
    triton_model = load_model(d, cfg, torch.bfloat16, torch.device("cpu"))
    triton_layer_ops.use_triton_layer_ops(triton_model)
    rows = {
        "torch modules + TorchAttention": decode_step(torch_model, TorchAttention(16), cfg),
        "torch modules + TritonAttention": decode_step(torch_model, TritonAttention(16), cfg),
        "Triton layer ops + TritonAttention": decode_step(triton_model, TritonAttention(16), cfg),
    }
    for name, r in rows.items():
        print(f"{name:36s} {r['per_layer']:5.1f} kernels a layer ({r['triton']} Triton launches)")
    q = quantizer_kernels()
    print(f"fp8 linear (quantise + _scaled_mm): torch {q['torch']}, Triton {q['triton']} kernels")
    print(json.dumps({"rows": rows, "fp8_linear": q}))


if __name__ == "__main__":
    main()
