"""Time to first token of one long prompt, offline (`LLM.generate`, one output token): prefill
alone, chunked at `--max-num-batched-tokens`, for each attention backend given, interleaved in
one run, so the prefill attention kernel is compared with SDPA on the same weights.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_long_prompt.py \
        --model ../peers/models/SmolLM2-135M-Instruct.bf16.gguf --lengths 512 2048 4096 8000

Prompts are random token ids (seeded), one fresh prompt per timing (no prefix-cache hits).
"""

import argparse
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from herd import LLM, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory or GGUF file")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--backends", nargs="+", default=["torch", "cpu"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    print(f"{platform.node()} threads {torch.get_num_threads()} avx512_bf16 "
          f"{'avx512_bf16' in flags} amx {'amx_bf16' in flags}")  # fmt: skip
    top = max(args.lengths) + 1
    llms = {
        b: LLM(
            args.model,
            dtype=args.dtype,
            attention_backend=b,
            max_model_len=top,
            max_num_batched_tokens=args.max_num_batched_tokens,
        )  # fmt: skip
        for b in args.backends
    }
    vocab = next(iter(llms.values())).engine.runner.model.config.vocab_size
    rng = random.Random(0)
    one = SamplingParams(max_tokens=1, temperature=0)
    for llm in llms.values():  # warm-up: kernels built, pages touched
        llm.generate([{"prompt_token_ids": [rng.randrange(vocab) for _ in range(64)]}], one)
    for n in args.lengths:
        times = {b: [] for b in llms}
        for _ in range(args.rounds):
            for b, llm in llms.items():
                prompt = {"prompt_token_ids": [rng.randrange(vocab) for _ in range(n)]}
                t0 = time.perf_counter()
                llm.generate([prompt], one, use_tqdm=False)
                times[b].append(time.perf_counter() - t0)
        cells = ", ".join(f"{b} {statistics.median(t):.2f} s" for b, t in times.items())
        print(f"prompt {n} tokens: TTFT (median of {args.rounds}) {cells}", flush=True)


if __name__ == "__main__":
    main()
