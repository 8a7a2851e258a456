"""The GPU suite, one command (< 8 min on an H100): correctness first (gpu_checks.py: the Triton
kernels and compiled FlexAttention against the reference backend, CUDA-graph decode against eager
greedy tokens, fp8 `_scaled_mm` against bf16, the Triton layer ops against the torch modules),
then Llama-3.1-8B shapes with random bf16 weights, bf16 and fp8 weights; batch-1 decode tok/s
(CUDA graphs, and eager beside it), offline 128/128 throughput at 256 prompts, TTFT and ITL at 4
requests/s (engine-level arrivals, no HTTP), weight and KV memory, start-up and graph-capture
time; transformers' batch-1 decode on the same GPU beside it; last, if time is left, the
attention backends timed on one layer (gpu_attention.py). Each part runs under its own guard and
time limit; the JSON is rewritten after every part (a part that failed records its error), and
progress lines go to stdout.

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_suite.py --out gpu_suite.json
    PYTHONPATH=src .venv/bin/python benchmarks/gpu_suite.py --tiny   # the same logic, CPU, seconds
"""

import argparse
import gc
import json
import platform
import random
import signal
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import gpu_attention  # beside this script
import gpu_checks
import torch

from herd.model.demo import write_demo_model

LLAMA_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    max_position_embeddings=8192,
)
TINY = dict(LLAMA_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
TINY.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512)
TINY.update(max_position_embeddings=1024)


def write_random_checkpoint(path: Path, shape: dict, seed: int = 0, device: str = "cpu") -> Path:
    """A Llama checkpoint of `shape` with random bf16 weights, written tensor by tensor (an 8B
    model never exists in float32): the demo tokenizer and config, then our own safetensors. The
    numbers are drawn on `device` (a GPU draws 8B of them in well under a second; a CPU takes
    minutes)."""
    from safetensors.torch import save_file

    write_demo_model(path, num_hidden_layers=1, hidden_size=64, intermediate_size=64)
    config = json.loads((path / "config.json").read_text())
    config.update(shape, torch_dtype="bfloat16", tie_word_embeddings=False)
    (path / "config.json").write_text(json.dumps(config))
    gen = torch.Generator(device).manual_seed(seed)
    h, i, d = shape["hidden_size"], shape["intermediate_size"], shape["head_dim"]
    q, kv = shape["num_attention_heads"] * d, shape["num_key_value_heads"] * d

    def rand(*dims):
        return (torch.randn(*dims, generator=gen, device=device) * 0.02).to(torch.bfloat16).cpu()

    for old in path.glob("*.safetensors*"):
        old.unlink()
    weight_map = {}

    def save(tensors: dict, name: str) -> None:
        save_file(tensors, path / name)
        weight_map.update(dict.fromkeys(tensors, name))

    save(
        {
            "model.embed_tokens.weight": rand(shape["vocab_size"], h),
            "lm_head.weight": rand(shape["vocab_size"], h),
            "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
        },
        "model-embed.safetensors",
    )
    for n in range(shape["num_hidden_layers"]):
        p = f"model.layers.{n}."
        layer = {
            p + "self_attn.q_proj.weight": rand(q, h),
            p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h),
            p + "self_attn.o_proj.weight": rand(h, q),
            p + "mlp.gate_proj.weight": rand(i, h),
            p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        }
        save(layer, f"model-layer{n:03d}.safetensors")
    index = {"metadata": {}, "weight_map": weight_map}  # transformers reads shards by this
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(n)]


def greedy(max_tokens: int):
    from herd.engine.sampling_params import SamplingParams

    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def generate_tok_s(llm, ids: list[list[int]], out_len: int) -> float:
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in ids], greedy(out_len))
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)


def arrivals(engine, ids: list[list[int]], rate: float, out_len: int) -> dict:
    """Requests arriving at `rate`/s (evenly spaced) into the engine's step loop: TTFT and ITL."""
    start, pending = time.perf_counter(), list(enumerate(ids))
    first, last, gaps = {}, {}, []
    while pending or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while pending and pending[0][0] / rate <= now:
            i, p = pending.pop(0)
            engine.add_request(str(i), p, greedy(out_len), arrival_time=None)
            first[str(i)] = [start + i / rate, None]
        for out in engine.step():
            t = time.perf_counter()
            if first[out.request_id][1] is None:
                first[out.request_id][1] = t
            elif out.request_id in last:
                gaps.append((t - last[out.request_id]) / max(1, len(out.outputs[0].token_ids)))
            last[out.request_id] = t
    ttft = [b - a for a, b in first.values()]
    return {
        "ttft_ms_p50": 1e3 * statistics.median(ttft),
        "ttft_ms_p99": 1e3 * sorted(ttft)[int(0.99 * (len(ttft) - 1))],
        "itl_ms_p50": 1e3 * statistics.median(gaps),
        "itl_ms_p99": 1e3 * sorted(gaps)[int(0.99 * (len(gaps) - 1))],
    }


def memory(llm) -> dict:
    runner = llm.engine.runner
    from herd.model.quant import weight_bytes  # packed and quantized linears' buffers included

    weights = weight_bytes(runner.model)["total"]
    kv = runner.kv_cache.numel() * runner.kv_cache.element_size()
    return {"weight_gib": weights / 2**30, "kv_gib": kv / 2**30, "kv_blocks": runner.num_blocks}


def run_herd(model_dir: Path, quantization: str | None, a: argparse.Namespace, vocab: int) -> dict:
    from herd.engine.llm import LLM

    kw = dict(dtype="bfloat16", quantization=quantization, max_num_seqs=a.num_prompts)
    if a.tiny:
        kw.update(num_kv_blocks=512, enforce_eager=True)
    t0 = time.perf_counter()
    llm = LLM(model_dir, **kw)
    r = {"load_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    llm.engine.compile_decode()  # CUDA graphs for every decode bucket (on CPU --tiny: none)
    graphs = llm.engine.runner.graphs
    r["capture_s"] = time.perf_counter() - t0
    r["graph_buckets"] = sorted(getattr(graphs, "captured", ())) if graphs else []
    r["graph_buckets_failed"] = sorted(graphs.failed) if graphs else []
    r["attention_backend"] = type(llm.engine.runner.backend).__name__
    one = prompts(1, a.input_len, vocab)
    generate_tok_s(llm, one, 8)  # warm-up
    r["batch1_tok_s"] = generate_tok_s(llm, one, a.output_len)
    llm.engine.runner.graphs = None  # the same engine without graphs: what they buy
    r["batch1_tok_s_eager"] = generate_tok_s(llm, one, a.output_len)
    llm.engine.runner.graphs = graphs
    many = prompts(a.num_prompts, a.input_len, vocab)
    r["offline_tok_s"] = generate_tok_s(llm, many, a.output_len)
    r["at_rate"] = arrivals(llm.engine, many[: a.rate_prompts], a.rate, a.output_len)
    r.update(memory(llm))
    del llm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return r


def run_transformers(model_dir: Path, a: argparse.Namespace, vocab: int, device: str) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    ids = torch.tensor(prompts(1, a.input_len, vocab), device=device)
    kw = dict(do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, **kw)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=a.output_len, min_new_tokens=a.output_len, **kw)
        elapsed = time.perf_counter() - t0
    return {"batch1_tok_s": a.output_len / elapsed}


class Suite:
    """Runs parts in order under a total time budget, each guarded (an exception or its time
    limit is recorded, the next part runs), rewriting the JSON after each."""

    def __init__(self, out: Path, budget_s: float, result: dict) -> None:
        self.out, self.budget_s, self.result = out, budget_s, result
        self.t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def part(self, name: str, fn, *args, need_s: float = 0) -> None:
        left = self.budget_s - (time.perf_counter() - self.t0)
        if left < need_s:
            self.result[name] = {"skipped": f"{left:.0f}s of the budget left, {need_s:.0f}s needed"}
            self.log(f"{name}: skipped ({left:.0f}s left)")
        else:
            self.log(f"{name}: start")
            t0 = time.perf_counter()
            signal.signal(signal.SIGALRM, _timeout)
            signal.alarm(max(1, int(left)))
            try:
                self.result[name] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - recorded; the suite goes on
                if isinstance(e, KeyboardInterrupt):
                    raise
                self.result[name] = {"error": repr(e), "trace": traceback.format_exc()[-3000:]}
            finally:
                signal.alarm(0)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            self.result[name]["part_s"] = time.perf_counter() - t0
            self.log(f"{name}: {json.dumps(self.result[name])[:400]}")
        self.result["total_s"] = time.perf_counter() - self.t0
        self.out.write_text(json.dumps(self.result, indent=1))


def _timeout(signum, frame):
    raise TimeoutError("the suite's time budget ran out in this part")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model on CPU: checks the logic")
    ap.add_argument("--out", default="gpu_suite.json")
    ap.add_argument("--model-dir", help="reuse a checkpoint written by an earlier run")
    ap.add_argument("--quantizations", nargs="+", default=["none", "fp8"])
    ap.add_argument("--budget-s", type=float, default=450, help="whole suite; parts past it skip")
    args = ap.parse_args()
    shape = TINY if args.tiny else LLAMA_8B
    sizes = (4, 8, 8, 4, 4.0) if args.tiny else (256, 128, 128, 64, 4.0)
    args.num_prompts, args.input_len, args.output_len, args.rate_prompts, args.rate = sizes
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    result = {
        "shape": "tiny" if args.tiny else "llama-3.1-8b",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "workload": dict(zip(["prompts", "in", "out", "rate_prompts", "rate"], sizes, strict=True)),
    }
    suite = Suite(Path(args.out), args.budget_s, result)
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="herd-gpu-suite-"))

    def checkpoint() -> dict:
        t0 = time.perf_counter()
        if not (model_dir / "config.json").exists():
            write_random_checkpoint(model_dir, shape, device=device)
        return {"path": str(model_dir), "seconds": time.perf_counter() - t0}

    if args.tiny:
        suite.part("checkpoint", checkpoint)
    suite.part("check_attention", gpu_checks.check_attention, device, args.tiny, need_s=20)

    def graphs() -> dict:
        small = model_dir  # --tiny: the suite's own tiny checkpoint serves
        if not args.tiny:  # a small float32 model: graph and eager tokens comparable exactly
            small = Path(tempfile.mkdtemp(prefix="herd-gpu-checks-"))
            write_demo_model(small, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2)  # fmt: skip
        return gpu_checks.check_graphs(small, device, 6 if args.tiny else 16)

    suite.part("check_graphs", graphs, need_s=20)
    suite.part("check_fp8", gpu_checks.check_fp8, device, args.tiny, need_s=5)
    suite.part("check_layer_ops", gpu_checks.check_layer_ops, device, args.tiny, need_s=5)
    if not args.tiny:
        suite.part("checkpoint", checkpoint, need_s=60)
    vocab = shape["vocab_size"]
    for q in args.quantizations:
        quant = None if q == "none" else q
        suite.part(f"herd_{q}", run_herd, model_dir, quant, args, vocab, need_s=60)
    suite.part("transformers_bf16", run_transformers, model_dir, args, vocab, device, need_s=30)
    suite.part("attention_ms", gpu_attention.time_attention, device, args.tiny, need_s=45)
    checks = [
        result[k].get("ok")
        for k in ("check_attention", "check_graphs", "check_fp8", "check_layer_ops")
    ]
    result["checks_ok"] = all(checks)
    suite.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {suite.out}; checks_ok {result['checks_ok']}; summary (no traces):")
    for name, value in result.items():  # short: a remote run returns only the output's tail
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "trace"}
        print(f"  {name}: {json.dumps(value)[:300]}")


if __name__ == "__main__":
    main()
