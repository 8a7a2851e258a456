"""Weight quantization and the fp8 KV cache, measured: per model and precision, weight bytes,
process RSS after load, offline tokens/s, batch-1 decode tokens/s, perplexity and top-1 agreement
with the unquantized model on a fixed stdlib text; and llama.cpp (llama-cpp-python, its own venv)
on the same GGUF file in the same run.

    .venv/bin/python benchmarks/bench_quant.py [--models smollm2 small] [--llamacpp-python PY]

Each (model, precision) runs in its own process, so RSS is that configuration's alone. Quality is
read through the engine itself (prompt logprobs, prefill chunks of 256 tokens, so an fp8 KV
cache is read back), agreement against the first precision listed (bf16).
"""

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PRECISIONS = {  # name -> (quantization, kv_cache_dtype)
    "bf16": (None, "auto"),
    "int8": ("int8", "auto"),
    "int4": ("int4", "auto"),
    "fp8": ("fp8", "auto"),
    "fp8kv": (None, "fp8"),
}


def model_path(name: str) -> str:
    if name == "smollm2":
        from herd.model.default_model import ensure_default_model

        return str(ensure_default_model())
    path = Path(tempfile.gettempdir()) / "herd-bench-quant-small"
    if not (path / "config.json").exists():
        from bench_offline import SMALL  # the ~100M test model (random weights), declared once

        from herd.model.demo import write_demo_model

        write_demo_model(path, **SMALL)
    return str(path)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def text_ids(llm, n: int) -> list[int]:
    from herd.model.quant_eval import fixed_text

    return repeat_to(llm.get_tokenizer().encode(fixed_text()), n)


def repeat_to(ids: list[int], n: int) -> list[int]:
    return (ids * (1 + n // len(ids)))[:n]


def worker(path: str, precision: str, args) -> dict:
    """One configuration, in this process: load, memory, speed, quality."""
    import gc

    from herd import LLM, SamplingParams
    from herd.model.quant import weight_bytes

    quantization, kv = PRECISIONS[precision]
    common = dict(dtype=args.dtype, quantization=quantization, kv_cache_dtype=kv)
    common["kv_cache_memory"] = 256 << 20  # allocated zeroed: untouched pages add no RSS
    t0 = time.perf_counter()
    llm = LLM(path, max_num_seqs=args.num_prompts, **common)
    out = {"load_s": time.perf_counter() - t0}
    gc.collect()
    model = llm.engine.runner.model
    out |= {"rss": rss_bytes(), "weights": weight_bytes(model)["total"]}
    out["decoder_linears"] = sum(
        b.numel() * b.element_size()
        for layer in model.model.layers
        for name, b in [*layer.named_parameters(), *layer.named_buffers()]
        if "norm" not in name
    )
    out["kv_blocks"] = llm.engine.stats()["num_total_blocks"]
    ids = text_ids(llm, args.num_prompts * args.input_len + 4096)
    prompts = [ids[i * args.input_len : (i + 1) * args.input_len] for i in range(args.num_prompts)]
    greedy = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate([prompts[0]], SamplingParams(max_tokens=4))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, greedy)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    out["offline_tok_s"] = tokens / (time.perf_counter() - t0)
    out["decode_b1_tok_s"] = decode_rate(llm, prompts[1], args.decode_tokens)
    del llm, model
    gc.collect()
    # Quality through the engine: chunked prefill so later chunks read the KV cache.
    llm = LLM(path, max_num_batched_tokens=256, enable_prefix_caching=False, **common)
    n = min(args.eval_tokens, llm.engine.max_model_len - 1)
    ids = text_ids(llm, n)
    res = llm.generate([ids], SamplingParams(max_tokens=1, prompt_logprobs=1))[0]
    positions = [p for p in res.prompt_logprobs if p is not None]
    out["top1"] = [next(t for t, lp in p.items() if lp.rank == 1) for p in positions]
    nll = [-float(p[t]) for p, t in zip(positions, ids[1:], strict=True)]
    out["ppl"] = math.exp(sum(nll) / len(nll))
    return out


def decode_rate(llm, prompt: list[int], n: int) -> float:
    """Batch-1 decode tokens/s: one request, timed from its first token to its last."""
    from herd import SamplingParams

    engine = llm.engine
    engine.add_request("b1", prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    got, t0 = 0, None
    while engine.has_unfinished_requests():
        for r in engine.step():
            got += sum(len(o.token_ids) for o in r.outputs)
            if t0 is None and got:
                t0, first = time.perf_counter(), got
    return (got - first) / (time.perf_counter() - t0)


LLAMACPP = textwrap.dedent(
    """
    import json, sys, time
    from llama_cpp import Llama
    path, ids, n_prompts, in_len, out_len, decode = json.loads(sys.argv[1])
    llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=2, n_threads_batch=2,
                verbose=False, seed=0)
    no_eos = {llm.token_eos(): -1e9}
    def run(prompt, n):
        llm.reset()
        t = first = None; got = 0
        for _ in llm.create_completion(prompt, max_tokens=n, temperature=0, logit_bias=no_eos,
                                       stream=True):
            got += 1
            if first is None: first = time.perf_counter()
        return got, first
    run(ids[:16], 4)
    got, first = run(ids[:in_len], decode + 1)
    b1 = (decode) / (time.perf_counter() - first)
    t0 = time.perf_counter(); total = 0
    for i in range(n_prompts):
        total += run(ids[i * in_len:(i + 1) * in_len], out_len)[0]
    print(json.dumps({"decode_b1_tok_s": b1, "sequential_tok_s": total / (time.perf_counter() - t0)}))
    """
)


def llamacpp(python: str, gguf: str, ids: list[int], args) -> dict:
    payload = [gguf, ids, args.num_prompts, args.input_len, args.output_len, args.decode_tokens]
    proc = subprocess.run(
        [python, "-c", LLAMACPP, json.dumps(payload)], capture_output=True, text=True, timeout=900
    )
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "small"])
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--llamacpp-python", default="/work/peers/llamacpp/bin/python")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args)))
        return
    results = {"machine": platform.processor() or platform.machine(), "args": vars(args)}
    for name in args.models:
        path = model_path(name)
        rows = {}
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--worker", path, precision] + _passthrough(args)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                rows[precision] = {"error": proc.stderr[-800:]}
                print(name, precision, "FAILED", proc.stderr[-800:], file=sys.stderr)
                continue
            rows[precision] = json.loads(line[0][7:])
        _derive(rows, args.precisions[0])
        results[name] = rows
        if name == "smollm2" and Path(args.llamacpp_python).exists():
            from herd.engine.tokenizer import Tokenizer
            from herd.model.gguf_file import find_gguf
            from herd.model.quant_eval import fixed_text

            ids = repeat_to(Tokenizer(path).encode(fixed_text()), args.num_prompts * args.input_len)
            results["llamacpp"] = llamacpp(args.llamacpp_python, str(find_gguf(path)), ids, args)
        print_table(name, rows)
    if "llamacpp" in results:
        print("llama-cpp-python on the same GGUF:", json.dumps(results["llamacpp"]))
    for rows in (results.get(m, {}) for m in args.models):
        for r in rows.values():
            r.pop("top1", None)
    print(json.dumps(results))


def _passthrough(args) -> list[str]:
    out = []
    for key in ("dtype", "num_prompts", "input_len", "output_len", "decode_tokens", "eval_tokens"):
        out += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return out


def _derive(rows: dict, base: str) -> None:
    ref = rows.get(base, {})
    for r in rows.values():
        if "error" in r or "error" in ref:
            continue
        r["top1_agreement"] = sum(
            a == b for a, b in zip(r["top1"], ref["top1"], strict=True)
        ) / len(ref["top1"])
        r["weights_vs_base"] = r["weights"] / ref["weights"]
        r["linears_vs_base"] = r["decoder_linears"] / ref["decoder_linears"]
        r["decode_vs_base"] = r["decode_b1_tok_s"] / ref["decode_b1_tok_s"]


def print_table(name: str, rows: dict) -> None:
    print(f"\n{name}")
    head = "| precision | weights MB (vs base) | decoder linears vs base | RSS MB | KV blocks "
    head += "| offline tok/s | batch-1 decode tok/s (vs base) | ppl | top-1 agreement |"
    print(head)
    print("|" + "---|" * 9)
    for p, r in rows.items():
        if "error" in r:
            print(f"| {p} | failed |")
            continue
        print(
            f"| {p} | {r['weights'] / 1e6:.1f} ({r['weights_vs_base']:.0%}) "
            f"| {r['linears_vs_base']:.0%} | {r['rss'] / 1e6:.0f} | {r['kv_blocks']} "
            f"| {r['offline_tok_s']:.1f} | {r['decode_b1_tok_s']:.1f} ({r['decode_vs_base']:.2f}x) "
            f"| {r['ppl']:.2f} | {r['top1_agreement']:.2%} |"
        )


if __name__ == "__main__":
    main()
