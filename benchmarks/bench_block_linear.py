"""Linears alone: what eager CPU steps ran before (bf16: oneDNN with its prepacked weight,
model/packed_linear.py; float32: a plain `nn.Linear`, F.linear) against herd's `BlockLinear`
(weights packed in blocks, engine/cpu_block_linear.py), interleaved in one process, per shape:
median ms, GFLOP/s, and the largest difference between the two outputs. Shapes are
SmolLM2-135M's and the ~100M bench model's.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_block_linear.py --rows 1 24 64 2048
    PYTHONPATH=src .venv/bin/python benchmarks/bench_block_linear.py --dtype float32
"""

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from herd.engine.cpu_block_linear import load_kernel, pack_blocks
from herd.model.packed_linear import PackedLinear

SHAPES = [  # (K, N, what)
    (576, 960, "SmolLM2 qkv"), (576, 576, "SmolLM2 o"), (576, 3072, "SmolLM2 gate_up"),
    (1536, 576, "SmolLM2 down"), (576, 49152, "SmolLM2 lm_head"), (768, 1536, "small qkv"),
    (768, 4096, "small gate_up"), (2048, 768, "small down"),
]  # fmt: skip


def timed(linear: nn.Module, x: torch.Tensor, reps: int) -> float:
    linear(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        linear(x)
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 24, 64, 2048])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if load_kernel(dtype) is None:
        raise SystemExit(f"herd's {args.dtype} block kernel does not run here")
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}")
    before = "oneDNN" if dtype == torch.bfloat16 else "F.linear"
    print(f"{args.dtype}: rows, K, N, what, {before} ms, GFLOP/s, blocks ms, GFLOP/s, max diff")
    for rows in args.rows:
        for k, n, what in SHAPES:
            plain = nn.Linear(k, n, bias=False, dtype=dtype)
            onednn = PackedLinear(plain) if dtype == torch.bfloat16 else copy.deepcopy(plain)
            holder = nn.Module()
            holder.proj = plain
            pack_blocks(holder)
            x = torch.randn(rows, k, dtype=dtype)
            reps = max(3, int(1e9 / (2 * rows * k * n)))
            a, b = [], []
            with torch.inference_mode():
                for _ in range(args.rounds):
                    a.append(timed(onednn, x, reps))
                    b.append(timed(holder.proj, x, reps))
                diff = (onednn(x).float() - holder.proj(x).float()).abs().max().item()
            ta, tb, gf = statistics.median(a), statistics.median(b), 2 * rows * k * n / 1e6
            print(f"{rows:4d} {k:6d} {n:6d}  {what:16s} {ta:9.3f} {gf / ta:8.0f}   "
                  f"{tb:9.3f} {gf / tb:8.0f}  {diff:.3g}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
