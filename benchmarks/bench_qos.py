"""QoS under load, two parts.

`qos`: one real replica behind the gateway; a batch-class flood keeps its batch full while an
interactive key sends short streamed requests. Interactive TTFT p50 on an idle replica, under the
flood with classes (the engine preempts batch work for it), and under the flood without classes
(both keys one class: first come, first served).

`tpot`: the engine alone, a closed loop of long decodes; per-request TPOT and throughput at fixed
`max_num_seqs` against `--target-tpot-ms` (the batch capped from step times measured online).

    python benchmarks/bench_qos.py --part qos
    python benchmarks/bench_qos.py --part tpot [--target-tpot-ms 40]"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from herd.gateway.app import Gateway, serve
from herd.gateway.auth import hash_key
from herd.gateway.config import GatewayConfig
from herd.model.demo import write_demo_model

MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, head_dim=32,
             num_attention_heads=8, num_key_value_heads=4)  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ---- part qos -------------------------------------------------------------------------------


def keys_file(path: Path, classes: bool) -> str:
    table = {
        "interactive": {"priority": [-10, 0], "max_tokens": 512},
        "batch": {"priority": [10, 100], "max_tokens": 4096},
    }
    one = {"standard": {"priority": [0, 0], "max_tokens": 4096}}
    keys = [
        {"id": "chat", "sha256": hash_key("sk-chat"), "class": "interactive" if classes else None},
        {"id": "bulk", "sha256": hash_key("sk-bulk"), "class": "batch" if classes else None},
    ]
    for k in keys:
        if k["class"] is None:
            del k["class"]
    path.write_text(yaml.safe_dump({"classes": table if classes else one, "keys": keys}))
    return str(path)


async def start_replica(
    model: Path, max_num_seqs: int, device: str
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "herd.cli", "replica", "--model", str(model), "--port", str(port),
           "--dtype", "float32", "--device", device, "--max-num-seqs", str(max_num_seqs),
           "--log-level", "warning", "--max-model-len", "1024", "--served-model-name", "m"]  # fmt: skip
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            try:
                async with s.get(url + "/ready") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    proc.kill()
    raise RuntimeError("replica never became ready")


async def flood_loop(session, url: str, stop: asyncio.Event, tokens: list[int]) -> None:
    headers = {"Authorization": "Bearer sk-bulk"}
    while not stop.is_set():
        body = {"model": "m", "prompt": f"batch job {random.random()} " * 8, "max_tokens": 96,
                "ignore_eos": True}  # fmt: skip
        async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
            data = await r.json()
            if r.status == 200:
                tokens.append(data["usage"]["completion_tokens"])


async def interactive(session, url: str, n: int) -> list[float]:
    headers = {"Authorization": "Bearer sk-chat"}
    ttfts = []
    for i in range(n):
        body = {"model": "m", "prompt": f"hello {i} {random.random()}", "max_tokens": 4,
                "stream": True, "ignore_eos": True}  # fmt: skip
        t0 = time.perf_counter()
        async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
            first = None
            async for line in r.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - t0
            ttfts.append(first if first is not None else float("inf"))
        await asyncio.sleep(0.1)
    return ttfts


async def scenario(replica: str, tmp: Path, classes: bool, flood: int, n: int) -> dict:
    config = GatewayConfig(port=free_port(), upstreams=[replica])
    config.api_keys = keys_file(tmp / f"keys-{classes}.yaml", classes)
    config.health.interval_s = 0.2
    gw = Gateway(config)
    runner = await serve(gw, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    while not gw.replicas.ready():
        await asyncio.sleep(0.05)
    stop, tokens = asyncio.Event(), []
    async with aiohttp.ClientSession() as session:
        floods = [asyncio.create_task(flood_loop(session, url, stop, tokens)) for _ in range(flood)]
        if flood:
            await asyncio.sleep(3.0)  # let the flood fill the batch
        t0 = time.perf_counter()
        ttfts = await interactive(session, url, n)
        elapsed = time.perf_counter() - t0
        stop.set()
        await asyncio.gather(*floods)
    await runner.cleanup()
    return {"p50": pct(ttfts, 0.5), "p90": pct(ttfts, 0.9), "batch_tok_s": sum(tokens) / elapsed}


async def part_qos(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-qos-"))
    model = write_demo_model(tmp / "model", **MODEL)
    proc, replica = await start_replica(model, args.max_num_seqs, args.device)
    try:
        flood = 2 * args.max_num_seqs
        rows = [
            ("idle replica", await scenario(replica, tmp, True, 0, args.requests)),
            ("batch flood, classes", await scenario(replica, tmp, True, flood, args.requests)),
            ("batch flood, one class", await scenario(replica, tmp, False, flood, args.requests)),
        ]
    finally:
        proc.terminate()
        proc.wait()
    idle = rows[0][1]["p50"]
    print("| scenario | interactive TTFT p50 ms | p90 ms | vs idle p50 | batch tok/s |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['p50'] * 1e3:.1f} | {r['p90'] * 1e3:.1f} | "
              f"{r['p50'] / idle:.2f}x | {r['batch_tok_s']:.0f} |")  # fmt: skip


# ---- part tpot ------------------------------------------------------------------------------


def run_engine(
    model: Path, max_num_seqs: int, target: float | None, n: int, conc: int, device: str = "cpu"
) -> dict:
    from herd.engine.config import EngineConfig, SchedulerConfig
    from herd.engine.llm_engine import LLMEngine
    from herd.engine.sampling_params import SamplingParams

    engine = LLMEngine(EngineConfig(model=str(model), dtype="float32", device=device,
                                    scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                                              target_tpot_ms=target)))  # fmt: skip
    params = SamplingParams(max_tokens=48, ignore_eos=True, temperature=0)
    times: dict[str, list[float]] = {}
    sent = done = 0
    t0 = time.perf_counter()
    while done < n:
        while sent < n and sent - done < conc:
            engine.add_request(f"r{sent}", [(sent * 7 + i) % 500 + 3 for i in range(24)], params)
            sent += 1
        for out in engine.step():
            now = time.perf_counter()
            times.setdefault(out.request_id, []).extend([now] * len(out.outputs[0].token_ids))
            done += out.finished
    elapsed = time.perf_counter() - t0
    tpots = [(t[-1] - t[0]) / (len(t) - 1) for t in times.values() if len(t) > 1]
    tokens = sum(len(t) for t in times.values())
    return {"tpots": tpots, "p50": pct(tpots, 0.5), "p90": pct(tpots, 0.9),
            "tok_s": tokens / elapsed, "cap": engine.scheduler.seq_cap}  # fmt: skip


def part_tpot(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-tpot-"))
    model = write_demo_model(tmp / "model", **MODEL)
    run_engine(model, 4, None, 8, 4, args.device)  # warm-up
    rows = [
        ("fixed max_num_seqs 64", run_engine(model, 64, None, args.tpot_requests, 64, args.device))
    ]
    # Without a target given: half the full batch's TPOT, a target the full batch cannot meet.
    target = args.target_tpot_ms or round(rows[0][1]["p50"] * 1e3 / 2, 1)
    rows.append(
        ("fixed max_num_seqs 8", run_engine(model, 8, None, args.tpot_requests, 64, args.device))
    )
    rows.append((f"target_tpot_ms {target} (max 64)",
                 run_engine(model, 64, target, args.tpot_requests, 64, args.device)))  # fmt: skip
    print(f"| batching | TPOT p50 ms | p90 ms | within {target} ms | tok/s | final cap |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        within = f"{sum(x * 1e3 <= target for x in r['tpots']) / len(r['tpots']) * 100:.0f}%"
        print(f"| {label} | {r['p50'] * 1e3:.1f} | {r['p90'] * 1e3:.1f} | {within} | "
              f"{r['tok_s']:.0f} | {r['cap']} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("qos", "tpot"), default="qos")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--requests", type=int, default=20, help="interactive requests per scenario")
    p.add_argument("--target-tpot-ms", type=float, help="default: half the full batch's TPOT")
    p.add_argument("--tpot-requests", type=int, default=192)
    args = p.parse_args()
    if args.part == "qos":
        asyncio.run(part_qos(args))
    else:
        part_tpot(args)


if __name__ == "__main__":
    main()
