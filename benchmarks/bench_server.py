"""Server vs offline `LLM` on the same workload (issue 3's benchmark).

1. Throughput: N streaming requests at concurrency C through a real `herd replica` process,
   against `LLM.generate` of the same prompts in one batch; goal >= 90% of offline tokens/s.
2. Overhead at concurrency 1: server round trip minus the offline engine's time for the same
   request, per request (max_tokens=1) and per streamed token; goal <= 1 ms p50 per request.

    .venv/bin/python benchmarks/bench_server.py [--model DIR] [--requests 256] [--concurrency 64]
"""

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time

# The replica sets this too (see herd.server.main); same OpenMP policy on both sides of the test.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import aiohttp

from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.server.launch import ReplicaProcess


def prompts(n: int) -> list[str]:
    return [f"Request {i}: tell me a story about the quick brown fox number {i}" for i in range(n)]


async def stream_one(session, url: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    t0 = time.perf_counter()
    tokens = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    tokens += len(choice.get("token_ids", []))
    return tokens, time.perf_counter() - t0


async def server_throughput(url: str, ps: list[str], max_tokens: int, concurrency: int):
    queue = list(ps)
    total = 0

    async def worker(session):
        nonlocal total
        while queue:
            tokens, _ = await stream_one(session, url, queue.pop(), max_tokens)
            total += tokens

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        await stream_one(session, url, "warm", 2)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return total, time.perf_counter() - t0


async def server_latencies(url: str, max_tokens: int, reps: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        await stream_one(session, url, "warm", 2)
        return [(await stream_one(session, url, "Hello there", max_tokens))[1] for _ in range(reps)]


def offline_latencies(llm: LLM, max_tokens: int, reps: int) -> list[float]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate("warm", params)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        llm.generate("Hello there", params)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: a fresh demo model)")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--reps", type=int, default=30, help="sequential requests for the overhead runs"
    )
    ap.add_argument("--rounds", type=int, default=3, help="alternating offline/server rounds")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from herd.model.demo import write_demo_model

        model = str(write_demo_model(tempfile.mkdtemp(prefix="herd-bench-")))
    engine = dict(dtype="float32", device="cpu", max_num_seqs=args.concurrency)
    ps = prompts(args.requests)

    llm = LLM(model, **engine)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(ps[:4], params)
    flags = ["--dtype", "float32", "--device", "cpu", "--max-num-seqs", str(args.concurrency)]
    ratios, off_rates, srv_rates, per_req, per_tok = [], [], [], [], []
    # Offline and server runs alternate, `--rounds` times, so load from other processes on a
    # shared machine hits both sides alike; medians are reported.
    with ReplicaProcess(model, *flags, "--log-level", "warning") as replica:
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            outs = llm.generate(ps, params)
            offline_s = time.perf_counter() - t0
            offline_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            tokens, server_s = asyncio.run(
                server_throughput(replica.url, ps, args.max_tokens, args.concurrency)
            )
            assert tokens == offline_tokens, (tokens, offline_tokens)
            off_rates.append(offline_tokens / offline_s)
            srv_rates.append(tokens / server_s)
            ratios.append(srv_rates[-1] / off_rates[-1])
            off_1 = statistics.median(offline_latencies(llm, 1, args.reps))
            off_n = statistics.median(offline_latencies(llm, args.max_tokens + 1, args.reps // 2))
            srv_1 = statistics.median(asyncio.run(server_latencies(replica.url, 1, args.reps)))
            srv_n = statistics.median(
                asyncio.run(server_latencies(replica.url, args.max_tokens + 1, args.reps // 2))
            )
            per_req.append((srv_1 - off_1) * 1e3)
            per_tok.append(((srv_n - srv_1) - (off_n - off_1)) / args.max_tokens * 1e3)
    med = statistics.median
    print(
        f"workload: {args.requests} requests x {args.max_tokens} tokens, concurrency {args.concurrency}"
    )
    print(f"rounds: {args.rounds}; per round offline/server tok/s, ratio:")
    for o, s_, r in zip(off_rates, srv_rates, ratios, strict=True):
        print(f"  {o:8.1f} {s_:8.1f} {r:6.1%}")
    print(
        f"median: offline {med(off_rates):.1f} tok/s, server {med(srv_rates):.1f} tok/s, ratio {med(ratios):.1%}"
    )
    print(
        f"server overhead at concurrency 1 (median of rounds' p50): {med(per_req):.2f} ms per request, {med(per_tok):.3f} ms per streamed token"
    )


if __name__ == "__main__":
    main()
