"""Decode attention alone, one layer: TorchAttention's gather + SDPA against the C++ kernel that
reads the paged cache through the block table (herd.engine.cpu_paged_decode), interleaved in one
process, wall and process CPU time per call (median), and their largest difference.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_decode_attention.py --batch 64 --ctx 192
"""

import argparse
import statistics
import time

import torch

from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.cpu_paged_decode import load_kernel, paged_decode


def setup(args, dtype):
    g = torch.Generator().manual_seed(0)
    width = -(-args.ctx // args.block)
    blocks = args.batch * width + 1
    cache = torch.randn(2, blocks, args.block, args.hkv, args.dim, generator=g).to(dtype)
    table = torch.randperm(blocks - 1, generator=g)[: args.batch * width].view(args.batch, width)
    lens = torch.full((args.batch,), args.ctx) - torch.randint(0, args.block, (args.batch,))
    q = torch.randn(args.batch, args.hq, args.dim, generator=g).to(dtype)
    meta = AttentionMetadata(torch.zeros(0, dtype=torch.long), args.batch, [1] * args.batch,
                             lens.tolist(), [], table, lens)  # fmt: skip
    return q, cache, table, lens, meta


def timed(fn, n):
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=192)
    ap.add_argument("--hq", type=int, default=12)
    ap.add_argument("--hkv", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lib = load_kernel()
    assert lib is not None, "no C++ compiler: the kernel could not be built"
    for name in args.dtype:
        compare(args, lib, getattr(torch, name))


def compare(args: argparse.Namespace, lib, dtype: torch.dtype) -> None:
    """Both decode paths on one random step, interleaved; prints medians and the difference."""
    name = str(dtype).removeprefix("torch.")
    torch_attn = TorchAttention(args.block)
    q, cache, table, lens, meta = setup(args, dtype)
    fns = {
        "gather+SDPA": lambda: torch_attn._decode(q, cache[0], cache[1], meta),
        "C++ paged": lambda: paged_decode(lib, q, cache[0], cache[1], table, lens),
    }
    err = (fns["gather+SDPA"]().float() - fns["C++ paged"]().float()).abs().max().item()
    res = {k: ([], []) for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            w, c = timed(fn, args.calls // args.rounds)
            res[k][0].extend(w)
            res[k][1].extend(c)
    for k, (w, c) in res.items():
        print(f"{name} B={args.batch} ctx={args.ctx} {k}: {statistics.median(w) * 1e3:.2f} ms "
              f"wall, {statistics.median(c) * 1e3:.2f} ms CPU")  # fmt: skip
    print(f"{name} max abs difference {err:.2e}")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
