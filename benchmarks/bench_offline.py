"""Offline throughput: herd's `LLM` against transformers `generate` (one request at a time, and a
static padded batch) on a ~100M-parameter Llama, same machine, same run.

    .venv/bin/python benchmarks/bench_offline.py --dtype bfloat16 float32

Workload: 64 prompts of 128 random token ids, 128 output tokens each (EOS ignored). HF
one-at-a-time runs on --hf-single-prompts prompts only (it is slow) and reports tokens/s.
"""

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

SMALL = dict(
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    head_dim=64,
    vocab_size=16384,
    max_position_embeddings=2048,
)


def make_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(600, vocab) for _ in range(length)] for _ in range(n)]


def bench_herd(model_dir: Path, prompts, out_len: int, dtype: str, **kw) -> dict:
    from herd import LLM, SamplingParams

    llm = LLM(model_dir, dtype=dtype, max_num_seqs=len(prompts), **kw)
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    # Warm-up at the run's batch size, so compiled decode graphs are built before the clock
    # starts, on prompts of other ids: warming up on the timed prompts left them in the prefix
    # cache, so the timed run skipped their prefill (923 vs 593-635 tok/s, RESULTS.md).
    warm = make_prompts(len(prompts), 16, SMALL["vocab_size"], seed=1)
    llm.generate([{"prompt_token_ids": p} for p in warm], SamplingParams(max_tokens=4))
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=True)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "seconds": elapsed, "tok_s": tokens / elapsed}


def bench_hf(model_dir: Path, prompts, out_len: int, dtype: str, batch: bool) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    kw = dict(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=2, pad_token_id=0)
        t0 = time.perf_counter()
        if batch:  # all prompts have the same length: no padding needed
            model.generate(torch.tensor(prompts), **kw)
        else:
            for p in prompts:
                model.generate(torch.tensor([p]), **kw)
        elapsed = time.perf_counter() - t0
    tokens = len(prompts) * out_len
    return {"tokens": tokens, "seconds": elapsed, "tok_s": tokens / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--hf-single-prompts", type=int, default=4)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--enforce-eager", action="store_true", help="herd without torch.compile")
    ap.add_argument("--compile-max-batch", type=int, help="herd's compile_max_batch")
    ap.add_argument("--model-dir", help="reuse a model directory (default: write one)")
    ap.add_argument(
        "--prompts", help="prompts.json from shared/peers/workload.py (default: random ids)"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    from herd.model.demo import write_demo_model

    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="herd-bench-"))
    if not (model_dir / "config.json").exists():
        write_demo_model(model_dir, **SMALL)
    prompts = make_prompts(args.num_prompts, args.input_len, SMALL["vocab_size"])
    if args.prompts:  # the peers' workload: the same token ids vLLM and llama.cpp were given
        prompts = [p["ids"] for p in json.loads(Path(args.prompts).read_text())][: args.num_prompts]
    results = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    for dtype in args.dtype:
        kw = {"enforce_eager": True} if args.enforce_eager else {}
        if args.compile_max_batch:
            kw["compile_max_batch"] = args.compile_max_batch
        r = {"herd": bench_herd(model_dir, prompts, args.output_len, dtype, **kw)}
        if not args.skip_hf:
            r["hf_batch"] = bench_hf(model_dir, prompts, args.output_len, dtype, batch=True)
            single = prompts[: args.hf_single_prompts]
            r["hf_single"] = bench_hf(model_dir, single, args.output_len, dtype, batch=False)
            r["ratio_vs_hf_batch"] = r["herd"]["tok_s"] / r["hf_batch"]["tok_s"]
            r["ratio_vs_hf_single"] = r["herd"]["tok_s"] / r["hf_single"]["tok_s"]
        results[dtype] = r
        print(dtype, json.dumps(r, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
