"""Replay an arrival trace against a real local fleet (demo model), autoscaled versus a fixed fleet
of the autoscaler's maximum size: TTFT SLO attainment, failures, replica-seconds (every replica
process alive, loading ones included) and the measured cold starts.

    python benchmarks/bench_autoscale.py --trace benchmarks/traces/spike.csv --time-scale 10

`--time-scale 10` plays the 30-minute spike trace in 3 minutes per fleet (the autoscaler's windows
shrink by the same factor); `--rate-scale` multiplies the trace's requests/s."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import aiohttp

from herd.fleet.config import AutoscaleConfig, FleetConfig, ServeConfig
from herd.fleet.serve import LocalFleet
from herd.fleet.supervisor import free_port
from herd.fleet.traces import Trace, read_trace
from herd.gateway.app import Gateway, serve
from herd.model.demo import write_demo_model

REPLICA_ARGS = ["--dtype", "float32", "--device", "cpu", "--log-level", "warning",
                "--max-model-len", "512", "--drain-timeout", "30"]  # fmt: skip


@dataclasses.dataclass
class Run:
    ttfts: list[float] = dataclasses.field(default_factory=list)
    failures: int = 0
    replica_seconds: float = 0.0
    max_replicas_seen: int = 0
    cold_starts: list[dict] = dataclasses.field(default_factory=list)


async def one_request(session, url: str, model: str, run: Run, max_tokens: int) -> None:
    body = {"model": model, "prompt": "The quick brown fox", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    try:
        async with session.post(url + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                run.failures += 1
                await resp.read()
                return
            first = None
            async for line in resp.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - t0
            run.ttfts.append(first if first is not None else float("inf"))
    except aiohttp.ClientError:
        run.failures += 1


async def replay(trace: Trace, url: str, model: str, run: Run, max_tokens: int, seed: int):
    rng = random.Random(seed)
    tasks: list[asyncio.Task] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        start = time.perf_counter()
        debt = 0.0
        for k, expected in enumerate(trace.arrivals_per_tick(0.1)):
            debt += expected
            while debt >= 1.0 or (debt > 0 and rng.random() < debt):
                debt -= 1.0
                tasks.append(asyncio.create_task(one_request(session, url, model, run, max_tokens)))
            await asyncio.sleep(max(0.0, start + (k + 1) * 0.1 - time.perf_counter()))
            if k % 100 == 0:
                print(f"  t={k / 10:.0f}s sent={len(tasks)} failures={run.failures}", flush=True)
        await asyncio.gather(*tasks)


async def measure(fleet: LocalFleet, run: Run, stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.5)
        now = time.perf_counter()
        alive = sum(1 for s in fleet.supervisor.slots if s.proc and s.proc.returncode is None)
        run.replica_seconds += alive * (now - last)
        run.max_replicas_seen = max(run.max_replicas_seen, alive)
        last = now


async def one_fleet(args, model_dir: str, autoscale: AutoscaleConfig | None) -> Run:
    gw = Gateway(dataclasses.replace(ServeConfig().gateway, port=free_port("127.0.0.1")))
    gw.config.proxy.queue_timeout_s = 60.0
    runner = await serve(gw, "127.0.0.1", gw.config.port)
    replicas = args.max_replicas if autoscale is None else 1
    config = ServeConfig(gateway=gw.config, fleet=FleetConfig(
        model=model_dir, replicas=replicas, extra_args=REPLICA_ARGS))  # fmt: skip
    if autoscale is not None:
        config.autoscale = autoscale
    fleet = LocalFleet(config, gw, tempfile.mkdtemp(prefix="bench-autoscale-"))
    gw.fleet = fleet
    run, stop = Run(), asyncio.Event()
    try:
        await fleet.start()
        url = f"http://127.0.0.1:{gw.config.port}"
        async with aiohttp.ClientSession() as s, s.get(url + "/v1/models") as resp:
            model = (await resp.json())["data"][0]["id"]
        meter = asyncio.create_task(measure(fleet, run, stop))
        trace = read_trace(args.trace).scaled(args.rate_scale)
        trace = Trace(tuple(t / args.time_scale for t in trace.times), trace.rates)
        await replay(trace, url, model, run, args.max_tokens, args.seed)
        stop.set()
        await meter
        run.cold_starts = [
            {"total": round(sum(s.phases.values()), 2), **{k: round(v, 2) for k, v in s.phases.items()}}
            for s in fleet.supervisor.slots if s.phases
        ]  # fmt: skip
    finally:
        await fleet.supervisor.stop()
        await runner.cleanup()
    return run


def summary(name: str, run: Run, slo: float) -> dict:
    n = len(run.ttfts) + run.failures
    ok = sum(1 for t in run.ttfts if t <= slo)
    ttfts = sorted(run.ttfts)
    return {
        "fleet": name, "requests": n, "failures": run.failures,
        "slo_attainment": round(ok / n, 4) if n else None,
        "ttft_p50_s": round(ttfts[len(ttfts) // 2], 3) if ttfts else None,
        "ttft_p99_s": round(ttfts[int(len(ttfts) * 0.99)], 3) if ttfts else None,
        "replica_seconds": round(run.replica_seconds, 1), "max_replicas": run.max_replicas_seen,
        "cold_starts_s": run.cold_starts,
    }  # fmt: skip


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trace", default="benchmarks/traces/spike.csv")
    p.add_argument("--time-scale", type=float, default=10.0)
    p.add_argument("--rate-scale", type=float, default=1.0)
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--target-load", type=float, default=4.0)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--ttft-slo", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    model_dir = tempfile.mkdtemp(prefix="bench-autoscale-model-")
    write_demo_model(model_dir)
    ts = args.time_scale
    autoscale = AutoscaleConfig(
        enabled=True, min_replicas=1, max_replicas=args.max_replicas, target_load=args.target_load,
        scale_up_window_s=5.0 / ts, scale_down_window_s=300.0 / ts, cooldown_s=30.0 / ts,
        ttft_slo_s=args.ttft_slo, slo_window_s=60.0 / ts, flap_hold_s=1800.0 / ts,
    )  # fmt: skip
    results = []
    for name, config in (("autoscaled", autoscale), ("fixed", None)):
        print(f"{name}: replaying {args.trace} at {ts:g}x speed", flush=True)
        run = await one_fleet(args, model_dir, config)
        results.append(summary(name, run, args.ttft_slo))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
