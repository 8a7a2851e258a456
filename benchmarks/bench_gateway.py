"""Added latency of the gateway: the same requests sent to a replica directly and through
`herd gateway`, at concurrency 1 and 64; p50/p99 per request and per streamed token.

    .venv/bin/python benchmarks/bench_gateway.py [--upstream URL] [--requests 400] [--append]

Without --upstream it starts the fake replica from tests/gateway (no model: it isolates the
gateway's own cost). The gateway runs as its own process, as in production."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from herd.fleet.supervisor import free_port

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "gateway" / "fake_upstream.py"
HERD = [sys.executable, "-c", "import sys; from herd.cli import main; sys.exit(main())"]


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not up")
        time.sleep(0.1)


async def one(session, url: str, payload: dict, stream: bool) -> tuple[float, list[float]]:
    """(end-to-end seconds, gaps between streamed events)."""
    start = time.perf_counter()
    gaps: list[float] = []
    async with session.post(url, json={**payload, "stream": stream}) as resp:
        assert resp.status == 200, await resp.text()
        if not stream:
            await resp.read()
        else:
            last = None
            async for _ in resp.content.iter_any():
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
    return time.perf_counter() - start, gaps


async def run(base: str, concurrency: int, n: int, stream: bool, model: str):
    payload = {"model": model, "prompt": "benchmark prompt", "max_tokens": 16, "temperature": 1.0}
    url = base + "/v1/completions"
    lat: list[float] = []
    gaps: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(5):  # warm connections
            await one(session, url, payload, stream)
        queue = list(range(n))

        async def worker():
            while queue:
                queue.pop()
                e2e, g = await one(session, url, payload, stream)
                lat.append(e2e)
                gaps.extend(g)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, gaps


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


def pace(upstream: str, seconds: float) -> None:
    """Space the fake replica's streamed tokens so gaps between them can be measured."""
    req = urllib.request.Request(
        upstream + "/control",
        data=f'{{"token_delay_s": {seconds}}}'.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=2).close()


async def bench(upstream: str, gateway: str, n: int, model: str, fake: bool) -> list[dict]:
    rows = []
    for concurrency in (1, 64):
        row = {"concurrency": concurrency}
        for stream in (False, True):
            if fake:
                pace(upstream, 0.002 if stream else 0.0)
            direct = await run(upstream, concurrency, n, stream, model)
            via = await run(gateway, concurrency, n, stream, model)
            i = 1 if stream else 0
            kind = "token" if stream else "request"
            for q in (50, 99):
                row[f"{kind}_direct_p{q}"] = pct(direct[i], q) * 1000
                row[f"{kind}_gateway_p{q}"] = pct(via[i], q) * 1000
                row[f"{kind}_added_p{q}"] = row[f"{kind}_gateway_p{q}"] - row[f"{kind}_direct_p{q}"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| concurrency | request p50 direct / via gateway (added) ms | request p99 (added) ms "
        "| token gap p50 (added) ms | token gap p99 (added) ms |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} "
            f"| {r['request_direct_p50']:.2f} / {r['request_gateway_p50']:.2f} ({r['request_added_p50']:+.2f}) "
            f"| {r['request_direct_p99']:.2f} / {r['request_gateway_p99']:.2f} ({r['request_added_p99']:+.2f}) "
            f"| {r['token_direct_p50']:.3f} / {r['token_gateway_p50']:.3f} ({r['token_added_p50']:+.3f}) "
            f"| {r['token_direct_p99']:.3f} / {r['token_gateway_p99']:.3f} ({r['token_added_p99']:+.3f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="replica base URL (default: start the fake replica)")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement")
    parser.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()
    procs = []
    try:
        upstream = args.upstream
        if upstream is None:
            port = free_port("127.0.0.1")
            procs.append(subprocess.Popen([sys.executable, str(FAKE), "--port", str(port)]))
            upstream = f"http://127.0.0.1:{port}"
        wait_up(upstream + "/health")
        gport = free_port("127.0.0.1")
        procs.append(
            subprocess.Popen(
                [*HERD, "gateway", "--upstream", upstream, "--port", str(gport)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        gateway = f"http://127.0.0.1:{gport}"
        wait_up(gateway + "/ready")
        rows = asyncio.run(
            bench(upstream, gateway, args.requests, args.model, args.upstream is None)
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    text = table(rows)
    print(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(
                "\n## Gateway added latency (bench_gateway.py)\n\n"
                f"{args.requests} completions (16 tokens) per cell against "
                f"{'the fake replica' if args.upstream is None else args.upstream}, directly and "
                "through `herd gateway` (own process), on the shared 2-core CPU machine with client, "
                "gateway and replica competing for the cores. Token gap = time between streamed "
                "chunks as the client saw them (the fake paces tokens 2 ms apart).\n\n"
                + text
                + "\n"
            )


if __name__ == "__main__":
    main()
