"""Speculative decoding on SmolLM2-135M-Instruct (the default model): batch-1 decode speed on an
input-grounded workload (rewrite / correct a given text) with n-gram prompt lookup and with a
draft model, against no speculation; then throughput at 64 concurrent requests, speculation on
(adaptive) vs off. All in one run, so the ratios share the machine's load.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_spec.py --out-len 96 --threads 1

The draft model is SmolLM2 cut to its first --draft-layers decoder layers (same embeddings,
final norm and tokenizer; no training), written to a temporary directory: the only smaller
model with SmolLM2's tokenizer on hand. Greedy decoding, so every configuration produces the
same tokens (checked).
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

TEXTS = [
    "The gateway recieves each request and chooses a replica with the least outstanding work. "
    "Replicas report there queue length every second, and the gateway stops sending to a "
    "replica that fails three health checks in a row.",
    "Paged attention stores the key and value vectors of every token in fixed-size blocks, so "
    "memory is allocated as sequences grow and freed as soon as they finish. Blocks that hold "
    "the same prompt prefix are shared betwen requests.",
    "To install herd, create a virtual envirnoment, install the package with pip, and run herd "
    "serve. The first start downloads the default model, which takes a few seconds on a fast "
    "conection.",
    "Continuous batching admits new requests at every step instead of waiting for the whole "
    "batch to finish. Short requests therefore leave early and long ones no longer block the "
    "queue behind them.",
]
INSTRUCTIONS = [
    "Rewrite the following text with the spelling mistakes corrected. Output only the text.",
    "Repeat the following paragraph exactly, word for word.",
]


def grounded_prompts(tok, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        instruction = INSTRUCTIONS[(i // len(TEXTS)) % len(INSTRUCTIONS)]
        msgs = [{"role": "user", "content": f"{instruction}\n\n{text}"}]
        out.append(tok.apply_chat_template(msgs))
    return out


def write_layer_skip_draft(gguf: Path, out: Path, layers: int) -> Path:
    """SmolLM2's first `layers` decoder layers as a safetensors checkpoint."""
    from safetensors.torch import save_file

    from herd.model.config import ModelConfig
    from herd.model.gguf_file import config_dict
    from herd.model.gguf_weights import checkpoint_tensors

    cfg = config_dict(gguf)
    cfg["num_hidden_layers"] = layers
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    keep = {}
    for name, tensor in checkpoint_tensors(gguf, ModelConfig.from_path(gguf)):
        if name.startswith("model.layers."):
            if int(name.split(".")[2]) >= layers:
                continue
        keep[name] = tensor.contiguous()
    save_file(keep, str(out / "model.safetensors"))
    return out


def run(model: str, prompts, out_len: int, batch: int, **kw) -> dict:
    from herd import LLM, SamplingParams

    llm = LLM(model, max_num_seqs=max(batch, 1), **kw)
    params = SamplingParams(temperature=0, max_tokens=out_len)
    llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=4))  # warm-up
    tokens, outs = 0, []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = [{"prompt_token_ids": p} for p in prompts[i : i + batch]]
        for o in llm.generate(chunk, params):
            outs.append(o.outputs[0].token_ids)
            tokens += len(o.outputs[0].token_ids)
    elapsed = time.perf_counter() - t0
    stats = llm.stats()
    rate = stats.get("spec_acceptance_rate")
    print(
        f"  {kw.get('speculative_config')} batch {batch}: {tokens / elapsed:.2f} tok/s", flush=True
    )
    return {
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tok_s": round(tokens / elapsed, 2),
        "acceptance": None if rate is None else round(rate, 3),
        "proposed": stats.get("spec_proposed_tokens"),
        "outputs": outs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-len", type=int, default=96)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--draft-layers", type=int, default=8)
    ap.add_argument("--batch1-prompts", type=int, default=4)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--eager", action="store_true", help="no compiled batch-1 decode graph")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: batch1 draft load")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:  # on a shared box, 1 thread avoids OpenMP spinning against other loads
        import torch

        torch.set_num_threads(args.threads)

    from herd.engine.tokenizer import Tokenizer
    from herd.model.default_model import ensure_default_model
    from herd.model.gguf_file import find_gguf

    model = str(ensure_default_model())
    tok = Tokenizer(model)
    common = {"enforce_eager": True} if args.eager else {}
    ngram = {"method": "ngram", "num_speculative_tokens": args.k}
    results: dict = {"machine": platform.processor() or platform.machine(), "args": vars(args)}
    if "batch1" not in args.skip:
        prompts = grounded_prompts(tok, args.batch1_prompts)
        configs = {"off": {}, "ngram": {"speculative_config": ngram}}
        if "draft" not in args.skip:
            tmp = Path(tempfile.mkdtemp())
            draft = write_layer_skip_draft(find_gguf(model), tmp / "draft", args.draft_layers)
            configs["draft"] = {
                "speculative_config": {
                    "method": "draft",
                    "model": str(draft),
                    "num_speculative_tokens": args.k,
                }
            }
        b1 = {
            name: run(model, prompts, args.out_len, 1, **common, **kw)
            for name, kw in configs.items()
        }
        reference = b1["off"]["outputs"]
        for name, r in b1.items():
            r["same_tokens_as_off"] = r.pop("outputs") == reference
            r["vs_off"] = round(r["tok_s"] / b1["off"]["tok_s"], 2)
            print(name, r, flush=True)
        results["batch1"] = b1
    if "load" not in args.skip:
        prompts = grounded_prompts(tok, args.concurrent)
        n = args.concurrent
        load = {
            "off": run(model, prompts, args.out_len, n, **common),
            "ngram_adaptive": run(
                model, prompts, args.out_len, n, speculative_config=ngram, **common
            ),
            "ngram_fixed_k": run(
                model, prompts, args.out_len, n,
                speculative_config=ngram | {"adaptive": False}, **common,
            ),
        }  # fmt: skip
        reference = load["off"]["outputs"]
        for name, r in load.items():
            r["same_tokens_as_off"] = r.pop("outputs") == reference
            r["vs_off"] = round(r["tok_s"] / load["off"]["tok_s"], 3)
            print(name, r, flush=True)
        results[f"concurrent_{n}"] = load
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
