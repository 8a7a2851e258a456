"""KV cache tiers, measured in-process on one engine per configuration:

1. second-turn TTFT: a conversation's turn 1 (a long prompt), then other traffic that pushes its
   blocks out of a small device pool, then turn 2 (turn 1 + its answer + a short question). Cold
   (no tier: a full prefill), host tier, disk tier (a memory-mapped file), and the pool large
   enough to keep turn 1 (a device prefix hit: the floor).
2. a preempted long request: it decodes, a higher-priority burst takes the whole pool (its blocks
   are evicted), and it resumes; the time from the burst's end to its next token, restored from
   the tier (`swap`) or recomputed, and what `auto` chose.

    cd benchmarks && PYTHONPATH=../src:. ../.venv/bin/python bench_kv_tiers.py \
        [--model smollm2|small] [--rounds 3] [--history 512] [--long 512] [--part turn2|preempt]

One engine per configuration, all loaded first; configurations alternate within each round, so
load drift on a shared machine hits them alike. Each round uses fresh token ids.
"""

import argparse
import platform
import statistics
import tempfile
import time

from herd.engine.config import EngineConfig, SchedulerConfig
from herd.engine.llm_engine import LLMEngine
from herd.engine.sampling_params import SamplingParams

BLOCK = 16


def model_path(name: str) -> str:
    if name == "smollm2":
        from herd.model.default_model import ensure_default_model

        return str(ensure_default_model())
    from pathlib import Path

    path = Path(tempfile.gettempdir()) / "herd-bench-kv-tiers-small"
    if not (path / "config.json").exists():
        from bench_offline import SMALL  # the ~100M test model (random weights), declared once

        from herd.model.demo import write_demo_model

        write_demo_model(path, **SMALL)
    return str(path)


def engine(model: str, blocks: int, disk_dir: str, tier: str, policy: str = "swap") -> LLMEngine:
    tier_bytes = 256 << 20  # generous: the tiers never drop a block in these runs
    tiers = {
        "none": {},
        "device": {},
        "host": dict(kv_offload_bytes=tier_bytes),
        "disk": dict(kv_disk_path=disk_dir, kv_disk_bytes=tier_bytes),
    }[tier]
    return LLMEngine(
        EngineConfig(
            model=model,
            block_size=BLOCK,
            num_kv_blocks=blocks,
            enforce_eager=True,
            kv_swap_policy=policy,
            scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=512),
            **tiers,
        )
    )


def run(e: LLMEngine, rid: str, ids: list[int], max_tokens: int, priority: int = 0):
    """Run one request to the end (others may share the steps); returns (TTFT s, output ids)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    e.add_request(rid, ids, params, priority=priority)
    ttft, out = None, []
    while e.has_unfinished_requests():
        for o in e.step():
            if o.request_id == rid:
                out.extend(o.outputs[0].token_ids)
                if ttft is None and out:
                    ttft = time.perf_counter() - t0
    return ttft, out


class CopyClock:
    """Seconds the engine spent running tier copies (wraps the one place it runs them)."""

    def __init__(self) -> None:
        import herd.engine.llm_engine as engine_module

        self.seconds = 0.0
        inner = engine_module.run_copies

        def timed(*args):
            t0 = time.perf_counter()
            inner(*args)
            self.seconds += time.perf_counter() - t0

        engine_module.run_copies = timed


def tokens(n: int, seed: int, vocab: int) -> list[int]:
    return [(7919 * i + 104729 * seed) % (vocab - 10) + 5 for i in range(n)]


def second_turn(e: LLMEngine, history: int, rnd: int, clock: CopyClock) -> dict:
    """Turn 1, other traffic (3 histories: turn 1 leaves a pool of 2.5), turn 2's TTFT."""
    vocab = e.model_config.vocab_size
    turn1 = tokens(history, 1000 + rnd, vocab)
    _, answer = run(e, f"t1-{rnd}", turn1, 8)
    for k in range(3):
        run(e, f"o{k}-{rnd}", tokens(history, 2000 + 10 * rnd + k, vocab), 1)
    turn2 = turn1 + answer + [11, 12, 13, 14, 15, 16, 17, 18]
    hits0, cached0, copy0 = tier_hits(e), e.kv.hits, clock.seconds
    ttft, _ = run(e, f"t2-{rnd}", turn2, 1)
    return dict(
        ttft=ttft,
        hits=tier_hits(e) - hits0,
        cached=e.kv.hits - cached0,
        copy_ms=(clock.seconds - copy0) * 1e3,
    )


def tier_hits(e: LLMEngine) -> int:
    return sum(v["hits"] for v in e.stats()["kv_tiers"].values() if isinstance(v, dict))


def preempted(e: LLMEngine, long_len: int, rnd: int) -> dict:
    """A long low-priority request decodes; a higher-priority burst takes the pool (its blocks
    are evicted); the time from the burst's end to its next token."""
    vocab = e.model_config.vocab_size
    before = e.stats()["kv_tiers"]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    e.add_request(f"long-{rnd}", tokens(long_len, 3000 + rnd, vocab), params, priority=5)
    while not e.scheduler.running or e.scheduler.running[0].num_output_tokens < 2:
        e.step()
    burst = [f"b{k}-{rnd}" for k in range(2)]
    for k, rid in enumerate(burst):
        ids = tokens(long_len, 4000 + 10 * rnd + k, vocab)
        e.add_request(rid, ids, SamplingParams(max_tokens=1, temperature=0), priority=0)
    burst_done, resumed = None, None
    while e.has_unfinished_requests() and resumed is None:
        outs = e.step()
        if burst_done is None and not any(rid in e.parents for rid in burst):
            burst_done = time.perf_counter()
        elif burst_done is not None and any(o.request_id == f"long-{rnd}" for o in outs):
            resumed = time.perf_counter() - burst_done
    while e.has_unfinished_requests():
        e.step()
    after = e.stats()["kv_tiers"]
    return dict(
        resume=resumed,
        restored=after.get("restored_blocks", 0) - before.get("restored_blocks", 0),
        recomputed=after.get("recomputed_blocks", 0) - before.get("recomputed_blocks", 0),
    )


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    return " ".join(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "small"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--history", type=int, default=512, help="turn 1's prompt tokens")
    ap.add_argument("--long", type=int, default=512, help="the preempted request's prompt")
    ap.add_argument("--part", default="both", choices=["turn2", "preempt", "both"])
    args = ap.parse_args()
    model = model_path(args.model)
    clock = CopyClock()
    print(f"# {platform.processor() or platform.machine()}, flags: {cpu_flags()}")
    with tempfile.TemporaryDirectory() as disk_dir:
        if args.part in ("turn2", "both"):
            turn2_table(model, args, disk_dir, clock)
        if args.part in ("preempt", "both"):
            preempt_table(model, args, disk_dir)


def turn2_table(model: str, args, disk_dir: str, clock: CopyClock) -> None:
    blocks = args.history // BLOCK
    configs = {  # tier -> pool blocks: 2.5 histories, or all of the traffic for "device"
        "none": blocks * 5 // 2,
        "host": blocks * 5 // 2,
        "disk": blocks * 5 // 2,
        "device": blocks * 5 * (args.rounds + 1),
    }
    engines = {t: engine(model, n, disk_dir, t) for t, n in configs.items()}
    for e in engines.values():
        run(e, "warm", [5, 6, 7] * 10, 2)  # first-step costs out of the timings
    rows: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for tier, e in engines.items():
            r = second_turn(e, args.history, rnd, clock)
            rows.setdefault(tier, []).append(r)
            print(f"turn2 round {rnd} {tier:6s} ttft {r['ttft'] * 1e3:8.1f} ms {r}", flush=True)
    cold = statistics.median(r["ttft"] for r in rows["none"])
    print("\n| turn 2 | TTFT p50 ms | vs cold | tier hits (blocks) | copy ms p50 |")
    print("|---|---|---|---|---|")
    for tier, rs in rows.items():
        m = statistics.median(r["ttft"] for r in rs)
        copy = statistics.median(r["copy_ms"] for r in rs)
        print(f"| {tier} | {m * 1e3:.1f} | {m / cold:.2f}x | {rs[-1]['hits']} | {copy:.1f} |")


def preempt_table(model: str, args, disk_dir: str) -> None:
    pool = args.long // BLOCK + 8  # the long request, or one burst request, fits; not both
    configs = [("none", "swap"), ("host", "swap"), ("disk", "swap"), ("host", "auto")]
    engines = {f"{t}/{p}": engine(model, pool, disk_dir, t, p) for t, p in configs}
    for e in engines.values():
        run(e, "warm", [5, 6, 7] * 10, 2)
    rows: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for name, e in engines.items():
            r = preempted(e, args.long, rnd)
            rows.setdefault(name, []).append(r)
            print(f"preempt round {rnd} {name} resume {r['resume'] * 1e3:8.1f} ms {r}", flush=True)
    print("\n| preempted long request | resume p50 ms | restored / recomputed blocks (last) |")
    print("|---|---|---|")
    for name, rs in rows.items():
        m = statistics.median(r["resume"] for r in rs)
        print(f"| {name} | {m * 1e3:.1f} | {rs[-1]['restored']} / {rs[-1]['recomputed']} |")


if __name__ == "__main__":
    main()
