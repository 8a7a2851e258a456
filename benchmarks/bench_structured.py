"""Grammar libraries for constrained decoding, measured on the default model's tokenizer
(SmolLM2-135M-Instruct, 49152 tokens): compile time of a typical JSON schema, and per-step time
to fill the token bitmask of every row and advance each matcher by one token, at batch 16 and 64.
The engine's own decode step at the same batch sizes gives the overhead as % of step time.

    PYTHONPATH=src python benchmarks/bench_structured.py [--steps 40] [--libs xgrammar,llguidance,outlines]

Other processes share the CPU: run it when you can and compare the ratios of one run.
"""

import argparse
import json
import os
import time
from collections.abc import Callable

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "address", "active"],
    "additionalProperties": False,
}
ANSWER = json.dumps(
    {
        "name": "Ada Lovelace",
        "age": 36,
        "email": "ada@example.org",
        "tags": ["math", "engines", "poetry"],
        "address": {"city": "London", "zip": "W1"},
        "active": True,
    },
    separators=(",", ":"),
)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_xgrammar(hf, vocab: int, answer: list[int], batches: list[int], steps: int) -> dict:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab)
    out = {"tokenizer_s": 0.0}
    out["tokenizer_s"] = timed(lambda: xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab))
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    out["compile_s"] = timed(lambda: compiler.compile_json_schema(SCHEMA, any_whitespace=False))
    grammar = compiler.compile_json_schema(SCHEMA, any_whitespace=False)
    batch_matcher = xgr.BatchGrammarMatcher(max_threads=2)
    for b in batches:
        matchers = [xgr.GrammarMatcher(grammar) for _ in range(b)]
        for i, m in enumerate(matchers):  # rows at different places in the answer
            for t in answer[: i % (len(answer) - steps)]:
                m.accept_token(t)
        pos = [i % (len(answer) - steps) for i in range(b)]
        mask = xgr.allocate_token_bitmask(b, vocab)

        def step(k: int, ms=matchers, p=pos, mask=mask) -> None:
            for i, m in enumerate(ms):
                m.fill_next_token_bitmask(mask, i)
            for i, m in enumerate(ms):
                m.accept_token(answer[p[i] + k])

        def step_batched(k: int, ms=matchers, p=pos, mask=mask) -> None:
            batch_matcher.batch_fill_next_token_bitmask(ms, mask)
            for i, m in enumerate(ms):
                m.accept_token(answer[p[i] + k])

        out[f"step_ms_b{b}"] = _per_step(step, steps // 2)
        out[f"step_batched_ms_b{b}"] = _per_step(step_batched, steps // 2, first=steps // 2)
    return out


def bench_llguidance(hf, vocab: int, answer: list[int], batches: list[int], steps: int) -> dict:
    import llguidance
    import llguidance.hf
    import numpy as np

    out = {}
    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab)
    out["tokenizer_s"] = time.perf_counter() - t0
    grm = llguidance.LLMatcher.grammar_from_json_schema(
        SCHEMA, defaults={"whitespace_flexible": False}
    )
    # the matcher compiles lazily: the first mask is part of the compile
    out["compile_s"] = timed(lambda: llguidance.LLMatcher(lltok, grm).compute_bitmask())
    executor = llguidance.LLExecutor()
    words = (vocab + 31) // 32
    for b in batches:
        matchers = [llguidance.LLMatcher(lltok, grm) for _ in range(b)]
        pos = [i % (len(answer) - steps) for i in range(b)]
        for i, m in enumerate(matchers):
            m.consume_tokens(answer[: pos[i]])
        mask = np.zeros((b, words), dtype=np.int32)
        ptr = mask.ctypes.data

        def step(k: int, ms=matchers, p=pos, ptr=ptr) -> None:
            for i, m in enumerate(ms):
                m.unsafe_compute_mask_ptr(ptr + i * words * 4, words * 4)
            for i, m in enumerate(ms):
                m.consume_token(answer[p[i] + k])

        def step_par(k: int, ms=matchers, p=pos, ptr=ptr, b=b) -> None:
            executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(ms)], ptr, words * 4, b)
            for i, m in enumerate(ms):
                m.consume_token(answer[p[i] + k])

        out[f"step_ms_b{b}"] = _per_step(step, steps // 2)
        out[f"step_batched_ms_b{b}"] = _per_step(step_par, steps // 2, first=steps // 2)
    return out


def bench_outlines(hf, vocab: int, answer: list[int], batches: list[int], steps: int) -> dict:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    out = {}
    t0 = time.perf_counter()
    eos = hf.eos_token_id
    byte_dec = _byte_decoder()
    tokens: dict[bytes, list[int]] = {}
    for piece, tid in hf.get_vocab().items():
        if tid == eos or tid >= vocab:
            continue
        raw = bytes(byte_dec[c] for c in piece) if all(c in byte_dec for c in piece) else None
        if raw:
            tokens.setdefault(raw, []).append(tid)
    v = Vocabulary(eos, tokens)
    out["tokenizer_s"] = time.perf_counter() - t0
    regex = build_regex_from_schema(json.dumps(SCHEMA))
    t0 = time.perf_counter()
    index = Index(regex, v)
    out["compile_s"] = time.perf_counter() - t0
    for b in batches:
        guides = [Guide(index) for _ in range(b)]
        pos = [i % (len(answer) - steps) for i in range(b)]
        for i, g in enumerate(guides):
            for t in answer[: pos[i]]:
                g.advance(t)
        mask = torch.zeros((b, (vocab + 31) // 32), dtype=torch.int32)

        def step(k: int, gs=guides, p=pos, mask=mask) -> None:
            for i, g in enumerate(gs):
                row = mask[i]
                g.write_mask_into(row.data_ptr(), row.numel(), row.element_size())
            for i, g in enumerate(gs):
                g.advance(answer[p[i] + k])

        out[f"step_ms_b{b}"] = _per_step(step, steps)
    return out


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest shift to 256+
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _per_step(step: Callable[[int], None], steps: int, first: int = 0) -> float:
    t0 = time.perf_counter()
    for k in range(first, first + steps):
        step(k)
    return (time.perf_counter() - t0) * 1000 / steps


def engine_overhead(model_dir, batches: list[int], steps: int) -> dict:
    """Decode steps of the engine with every row free, then with every row held to SCHEMA (the
    engine's own grammar path, llguidance): mean step time of each, and the time spent in the
    grammar calls (mask fill + apply, matcher advance) inside the constrained steps."""
    from herd.engine.config import EngineConfig
    from herd.engine.llm_engine import LLMEngine
    from herd.engine.sampling_params import SamplingParams, StructuredOutputsParams

    engine = LLMEngine(EngineConfig.from_flat(model=str(model_dir), max_num_seqs=max(batches)))
    so = engine.structured
    accept_s = [0.0]
    accept = so.accept

    def timed_accept(req, token):
        t0 = time.perf_counter()
        try:
            return accept(req, token)
        finally:
            accept_s[0] += time.perf_counter() - t0

    so.accept = timed_accept
    out = {}
    constraint = StructuredOutputsParams(json=SCHEMA)
    for b in batches:
        for label, spec in (("free", None), ("json", constraint)):
            params = SamplingParams(temperature=0, max_tokens=200, structured_outputs=spec)
            ids = [f"{label}{b}-{i}" for i in range(b)]
            for i, rid in enumerate(ids):
                engine.add_request(rid, f"Describe person number {i} as JSON.", params)
            while engine.scheduler.waiting or any(
                r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running
            ):
                engine.step()  # prefill
            so.fill_s = so.apply_s = accept_s[0] = 0.0
            times = []
            for _ in range(steps):
                if len(engine.scheduler.running) < b:
                    break  # a row finished: the batch is no longer b
                t0 = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - t0)
            out[f"{label}_step_ms_b{b}"] = 1000 * sum(times) / len(times)
            if spec is not None:
                n = len(times)
                out[f"fill_ms_b{b}"] = 1000 * so.fill_s / n
                out[f"apply_ms_b{b}"] = 1000 * so.apply_s / n
                out[f"accept_ms_b{b}"] = 1000 * accept_s[0] / n
            out[f"{label}_steps_b{b}"] = len(times)
            for rid in ids:
                engine.abort_request(rid)
            engine.step()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--libs", default="xgrammar,llguidance,outlines")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--no-engine", action="store_true")
    ap.add_argument("--engine-steps", type=int, default=15)
    args = ap.parse_args()
    from herd.engine.tokenizer import Tokenizer
    from herd.model.default_model import ensure_default_model

    model_dir = ensure_default_model()
    hf = Tokenizer(model_dir).hf
    vocab = len(hf)
    answer = hf.encode(ANSWER, add_special_tokens=False)
    batches = [int(b) for b in args.batches.split(",")]
    steps = min(args.steps, len(answer) - 2)
    print(f"uptime: {os.getloadavg()}; answer {len(answer)} tokens; vocab {vocab}")
    benches = {"xgrammar": bench_xgrammar, "llguidance": bench_llguidance}
    benches["outlines"] = bench_outlines
    results = {}
    for lib in args.libs.split(","):
        results[lib] = benches[lib](hf, vocab, answer, batches, steps)
        print(lib, json.dumps({k: round(v, 4) for k, v in results[lib].items()}))
    if not args.no_engine:
        eng = engine_overhead(model_dir, batches, args.engine_steps)
        print("engine", json.dumps({k: round(v, 2) for k, v in eng.items()}))
        for b in batches:
            free, held = eng[f"free_step_ms_b{b}"], eng[f"json_step_ms_b{b}"]
            fill, apply = eng[f"fill_ms_b{b}"], eng[f"apply_ms_b{b}"]
            grammar = fill + apply + eng[f"accept_ms_b{b}"]
            print(
                f"engine b{b}: free {free:.1f} ms/step, constrained {held:.1f} ms/step; grammar "
                f"{grammar:.2f} ms/step = {100 * grammar / held:.1f}% of the step (mask fill "
                f"{fill:.2f}, apply {apply:.2f})"
            )
            for lib, r in results.items():
                best = min(r[k] for k in (f"step_ms_b{b}", f"step_batched_ms_b{b}") if k in r)
                print(f"  {lib} b{b}: {best:.2f} ms = {100 * best / free:.1f}% of a free step")
    print(f"uptime after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
