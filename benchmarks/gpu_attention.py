"""The attention backends timed on one layer's step over a paged cache, ms per call: decode
batches (one token per sequence, every sequence with its own blocks) and a batch of prefills,
Llama-3-8B heads (32 query / 8 KV heads of 128), bf16. gpu_suite.py runs it as a part; alone:

    PYTHONPATH=src python benchmarks/gpu_attention.py            # CUDA
    PYTHONPATH=src python benchmarks/gpu_attention.py --tiny     # the logic, CPU, tiny shapes

Why it exists: flex attention's tiles hold 128 query rows, and in a decode step those are 128
different sequences, so each tile computes against the union of their keys; the Triton kernels
give each program one sequence. This measures what that costs.
"""

import argparse
import json
import random
import time
from dataclasses import replace

import torch

from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.flex_attention import FlexAttention
from herd.engine.triton_attention import TritonAttention, unusable

# (name, query lengths, context lengths): decodes of 256 x 256 (the 128/128 offline run's
# middle), 64 x 1024, one long decode, and 4 prompts of 1024 from position 0
CASES = [
    ("decode_256x256", [1] * 256, [256] * 256),
    ("decode_64x1024", [1] * 64, [1024] * 64),
    ("decode_1x4096", [1], [4096]),
    ("prefill_4x1024", [1024] * 4, [1024] * 4),
]
TINY_CASES = [("decode_8x40", [1] * 8, [40] * 8), ("prefill_2x24", [24] * 2, [24] * 2)]


def paged_step(dev, query_lens, seq_lens, bs=16, hq=32, hkv=8, d=128, seed=0):
    """q/k/v of the step's tokens, a cache holding every context in scattered blocks, and the
    step's metadata (decodes first), as the runner builds them."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    need = [-(-n // bs) for n in seq_lens]
    blocks = rng.sample(range(sum(need)), sum(need))
    tables = [[blocks.pop() for _ in range(n)] for n in need]
    nd = sum(1 for n in query_lens if n == 1)
    meta = AttentionMetadata.from_tables(tables, query_lens, seq_lens, nd, bs, dev)
    t = sum(query_lens)
    q, k, v = (torch.randn(t, h, d, generator=g).to(dev, torch.bfloat16) for h in (hq, hkv, hkv))
    cache = torch.randn(2, sum(need), bs, hkv, d, generator=g).to(dev, torch.bfloat16)
    return q, k, v, cache, meta


def ms_per_call(fn, dev: str, iters: int) -> float:
    for _ in range(2):  # compiles, autotunes, allocates
        fn()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return 1e3 * (time.perf_counter() - t0) / iters


def time_attention(dev: str, tiny: bool) -> dict:
    """ms per call of each usable backend on each case: one layer's cost, the step's metadata
    work (flex's block mask, Triton's prefill plan) done by the warm-up call, as a step's first
    layer does it for all its layers."""
    shape = dict(hq=4, hkv=2, d=16) if tiny else {}
    backends = {"torch": TorchAttention, "flex": FlexAttention}
    r = {}
    if why := unusable(torch.device(dev)):
        r["triton_skipped"] = why
    else:
        backends["triton"] = TritonAttention
    for name, query_lens, seq_lens in TINY_CASES if tiny else CASES:
        step = paged_step(dev, query_lens, seq_lens, **shape)
        r[name] = {b: _time_case(cls(16), *step, dev, tiny) for b, cls in backends.items()}
    return r


def _time_case(backend, q, k, v, cache, meta, dev: str, tiny: bool) -> float:
    meta = replace(meta, backend_state={})  # this backend's own per-step state
    return ms_per_call(
        lambda: backend.forward(q, k, v, cache[0], cache[1], meta), dev, 2 if tiny else 20
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    print(json.dumps(time_attention(dev, a.tiny), indent=1))


if __name__ == "__main__":
    main()
