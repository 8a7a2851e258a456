"""Tensor parallelism on CPU: offline throughput of the same workload with 1 rank and with N
gloo ranks (`tensor_parallel_size`), alternating in one run so machine load hits both alike.

    .venv/bin/python benchmarks/bench_tensor_parallel.py --tp 2 --rounds 2

On a 2-core box each of 2 ranks gets one torch thread, so expect no gain: the point is that it
runs, and what the all-reduces cost. Model: bench_offline's ~100M-parameter Llama (12 heads
over 4 KV heads), random weights; prompts of random token ids, EOS ignored.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# As `herd replica` does (before torch loads): OpenMP workers that spin while waiting cost
# a 2-thread engine ~100x on a loaded box, which would flatter the 1-thread ranks.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench_offline import SMALL, make_prompts  # noqa: E402 - after the OpenMP setting


def run(model_dir: Path, prompts, out_len: int, dtype: str, tp: int) -> dict:
    from herd import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model_dir, dtype=dtype, device="cpu", tensor_parallel_size=tp, enforce_eager=True)
    start_s = time.perf_counter() - t0
    try:
        ids = [{"prompt_token_ids": p} for p in prompts]
        llm.generate(ids[:1], SamplingParams(max_tokens=2))  # warm-up
        params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(ids, params)
        elapsed = time.perf_counter() - t0
    finally:
        llm.engine.close()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tp": tp, "start_s": start_s, "tokens": tokens, "seconds": elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--num-prompts", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--model-dir", help="reuse a model directory (default: write one)")
    args = ap.parse_args()
    from herd.model.demo import write_demo_model

    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="herd-bench-tp-"))
    if not (model_dir / "config.json").exists():
        write_demo_model(model_dir, seed=0, **SMALL)
    results = []
    for n in args.num_prompts:
        prompts = make_prompts(n, args.input_len, SMALL["vocab_size"])
        for _ in range(args.rounds):
            for tp in (1, args.tp):
                r = run(model_dir, prompts, args.output_len, args.dtype, tp)
                r.update(num_prompts=n, tok_s=r["tokens"] / r["seconds"])
                print(json.dumps(r), flush=True)
                results.append(r)
    print(f"\n{platform.processor() or platform.machine()}, dtype {args.dtype}")
    print("| prompts | tp | out tok/s (each round) | start s |\n|---:|---:|---|---:|")
    for n in args.num_prompts:
        for tp in (1, args.tp):
            rs = [r for r in results if r["num_prompts"] == n and r["tp"] == tp]
            rates = " / ".join(f"{r['tok_s']:.1f}" for r in rs)
            print(f"| {n} | {tp} | {rates} | {rs[-1]['start_s']:.1f} |")


if __name__ == "__main__":
    main()
