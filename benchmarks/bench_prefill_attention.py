"""Prefill attention alone, one layer: TorchAttention's SDPA a chunk at a time (masked over a
gathered copy of the context when a prefix is cached) against the C++ kernel that runs every
chunk of the step in one call through the block tables (herd.engine.cpu_paged_prefill),
interleaved in one process: median wall time per call, causal GFLOP/s, largest difference.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_prefill_attention.py --shapes 16x128 1x2048+2048
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from herd.engine.attention import AttentionMetadata, TorchAttention, store
from herd.engine.cpu_paged_prefill import load_kernel, paged_prefill


def parse_shape(text: str) -> tuple[int, int, int]:
    """'CxQ' or 'CxQ+P': C chunks of Q query tokens, each after P cached tokens."""
    head, _, prefix = text.partition("+")
    chunks, _, tokens = head.partition("x")
    return int(chunks), int(tokens), int(prefix or 0)


def setup(args, dtype, chunks: int, tokens: int, prefix: int):
    g = torch.Generator().manual_seed(0)
    ctx = prefix + tokens
    width = -(-ctx // args.block)
    blocks = chunks * width
    cache = torch.randn(2, blocks, args.block, args.hkv, args.dim, generator=g).to(dtype)
    perm = torch.randperm(blocks, generator=g)
    tables = [perm[i * width : (i + 1) * width] for i in range(chunks)]
    t = chunks * tokens
    qkv = torch.randn(t, (args.hq + 2 * args.hkv) * args.dim, generator=g).to(dtype)
    split = [args.hq * args.dim, args.hkv * args.dim, args.hkv * args.dim]
    q, k, v = (x.view(t, -1, args.dim) for x in qkv.split(split, dim=1))
    pos = torch.arange(prefix, ctx)
    slots = torch.cat(
        [table[pos // args.block] * args.block + pos % args.block for table in tables]
    )
    store(cache[0], slots, k)  # as the backend stores them before attending
    store(cache[1], slots, v)
    meta = AttentionMetadata(slots, 0, [tokens] * chunks, [ctx] * chunks, tables, None, None)
    return q, k, v, cache, meta


def compare(args, lib, dtype: torch.dtype, shape: str) -> None:
    chunks, tokens, prefix = parse_shape(shape)
    q, k, v, cache, meta = setup(args, dtype, chunks, tokens, prefix)
    outs = {name: torch.empty(q.shape, dtype=dtype) for name in ("SDPA", "C++")}
    reference = TorchAttention(args.block)
    fns = {
        "SDPA": lambda: reference._prefill_chunks(q, k, v, cache[0], cache[1], meta, outs["SDPA"]),
        "C++": lambda: paged_prefill(lib, q, cache[0], cache[1], meta, outs["C++"]),
    }
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            fn()  # warm
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append((time.perf_counter() - t0) / args.calls)
    err = (outs["SDPA"].float() - outs["C++"].float()).abs().max().item()
    flops = chunks * 4 * tokens * (prefix + (tokens + 1) / 2) * args.dim * args.hq
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"{str(dtype).removeprefix('torch.')} {shape}: SDPA {ms['SDPA']:.2f} ms, C++ {ms['C++']:.2f} "
          f"ms ({flops / ms['C++'] / 1e6:.0f} GFLOP/s), {ms['SDPA'] / ms['C++']:.1f}x, max diff "
          f"{err:.1e}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["16x128", "4x512", "1x2048", "1x512+1536",
                                                    "1x2048+2048"])  # fmt: skip
    ap.add_argument("--hq", type=int, default=12)
    ap.add_argument("--hkv", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    lib = load_kernel()
    assert lib is not None, (
        "no C++ compiler, or neither AVX-512 nor AVX2: the kernel could not be built"
    )
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    print(f"threads {torch.get_num_threads()}, avx512_bf16 {'avx512_bf16' in flags}, "
          f"amx {'amx_bf16' in flags}")  # fmt: skip
    for name in args.dtype:
        for shape in args.shapes:
            compare(args, lib, getattr(torch, name), shape)


if __name__ == "__main__":
    main()
