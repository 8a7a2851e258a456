"""KV cache tiers, measured in-process on one engine per configuration:

1. second-turn TTFT: a conversation's turn 1 (a long prompt), then other traffic that pushes its
   blocks out of a small device pool, then turn 2 (turn 1 + its answer + a short question). Cold
   (no tier: a full prefill), host tier, disk tier (a memory-mapped file), and the pool large
   enough to keep turn 1 (a device prefix hit: the floor).
2. a preempted long request: it decodes, a higher-priority burst takes the whole pool (its blocks
   are evicted), and it resumes; the time from the burst's end to its next token, restored from
   the tier (`swap`) or recomputed, and what `auto` chose.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_kv_tiers.py [--model smollm2|small] [--rounds 3]

Configurations alternate within each round, so load drift on a shared machine hits them alike.
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


def second_turn(model: str, tier: str, history: int, rnd: int, disk_dir: str) -> dict:
    # 4 histories' worth (6 of other traffic push turn 1 out); "device" keeps all of it.
    pool = history // BLOCK * (4 if tier != "device" else 8)
    e = engine(model, pool, disk_dir, tier)
    vocab = e.model_config.vocab_size
    turn1 = [(7 * i + rnd) % (vocab - 10) + 5 for i in range(history)]
    run(e, "warm", [5, 6, 7] * 10, 2)  # first-step costs out of the timings
    _, answer = run(e, "t1", turn1, 8)
    for k in range(6):  # other traffic: 1.5 pools' worth of distinct prompts
        run(e, f"o{k}", [(13 * i + k * 31 + rnd) % (vocab - 10) + 5 for i in range(history)], 1)
    turn2 = turn1 + answer + [11, 12, 13, 14, 15, 16, 17, 18]
    ttft, _ = run(e, "t2", turn2, 1)
    tiers = e.stats()["kv_tiers"]
    hits = sum(v["hits"] for k, v in tiers.items() if isinstance(v, dict))
    return dict(ttft=ttft, hits=hits, cached=e.kv.hits)


def preempted(model: str, tier: str, policy: str, long_len: int, rnd: int, disk_dir: str) -> dict:
    pool = long_len // BLOCK + 8
    e = engine(model, pool, disk_dir, tier, policy)
    vocab = e.model_config.vocab_size
    run(e, "warm", [5, 6, 7] * 10, 2)
    long_ids = [(11 * i + rnd) % (vocab - 10) + 5 for i in range(long_len)]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    e.add_request("long", long_ids, params, priority=5)
    while not e.scheduler.running or e.scheduler.running[0].num_output_tokens < 2:
        e.step()
    # A higher class takes the whole pool: the long request is preempted, its blocks evicted.
    burst = [[(17 * i + k + rnd) % (vocab - 10) + 5 for i in range(long_len)] for k in range(2)]
    for k, ids in enumerate(burst):
        e.add_request(f"b{k}", ids, SamplingParams(max_tokens=1, temperature=0), priority=0)
    burst_done, resumed = None, None
    while e.has_unfinished_requests() and resumed is None:
        outs = e.step()
        if burst_done is None and not any(f"b{k}" in e.parents for k in range(2)):
            burst_done = time.perf_counter()
        elif burst_done is not None and any(o.request_id == "long" for o in outs):
            resumed = time.perf_counter() - burst_done
    tiers = e.stats()["kv_tiers"]
    return dict(
        resume=resumed,
        preemptions=e.scheduler.num_preemptions,
        restored=tiers.get("restored_blocks", 0),
        recomputed=tiers.get("recomputed_blocks", 0),
    )


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    return " ".join(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "small"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--history", type=int, default=1024, help="turn 1's prompt tokens")
    ap.add_argument("--long", type=int, default=1024, help="the preempted request's prompt")
    args = ap.parse_args()
    model = model_path(args.model)
    print(f"# {platform.processor() or platform.machine()}, flags: {cpu_flags()}")
    with tempfile.TemporaryDirectory() as disk_dir:
        ttfts: dict[str, list] = {}
        for rnd in range(args.rounds):
            for tier in ("none", "host", "disk", "device"):
                r = second_turn(model, tier, args.history, rnd, disk_dir)
                ttfts.setdefault(tier, []).append(r["ttft"])
                print(f"turn2 round {rnd} {tier:6s} ttft {r['ttft'] * 1e3:8.1f} ms "
                      f"tier hits {r['hits']} cached tokens {r['cached']}", flush=True)
        cold = statistics.median(ttfts["none"])
        print("\n| turn 2 | TTFT p50 ms | vs cold |\n|---|---|---|")
        for tier, ts in ttfts.items():
            m = statistics.median(ts)
            print(f"| {tier} | {m * 1e3:.1f} | {m / cold:.2f}x |")
        resumes: dict[str, list] = {}
        for rnd in range(args.rounds):
            for tier, policy in (("none", "swap"), ("host", "swap"), ("disk", "swap"), ("host", "auto")):
                r = preempted(model, tier, policy, args.long, rnd, disk_dir)
                resumes.setdefault(f"{tier}/{policy}", []).append(r["resume"])
                print(f"preempt round {rnd} {tier}/{policy} resume {r['resume'] * 1e3:8.1f} ms {r}",
                      flush=True)
        print("\n| preempted long request | resume p50 ms |\n|---|---|")
        for k, ts in resumes.items():
            print(f"| {k} | {statistics.median(ts) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
