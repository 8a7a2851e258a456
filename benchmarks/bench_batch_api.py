"""Does a running batch cost interactive traffic? One real replica (a demo model) with the Batch
API on; short streamed interactive chat requests, one at a time, and their time to first token
(TTFT) in three conditions, interleaved per round so machine load drifts evenly over them:

  idle      nothing else runs
  batch     a batch of long lines runs (the Batch API: lowest priority, `--batch-concurrency`)
  equal     the same background load sent as ordinary requests (priority 0): what the batch
            would cost if it were not at the lowest priority

The engine's slots (`--max-num-seqs`) equal the background concurrency, so the background load
fills it: under `batch` an interactive request preempts a batch line; under `equal` it waits.
Also reports the background's generated tokens per second while the interactive requests ran.

    python benchmarks/bench_batch_api.py [--rounds 2] [--requests 10] [--concurrency 4]"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import openai

from herd.model.demo import write_demo_model
from herd.server.launch import ReplicaProcess

MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, head_dim=32,
             num_attention_heads=8, num_key_value_heads=4)  # fmt: skip
NAME = "demo"


def chat_body(i: int, max_tokens: int, **extra) -> dict:
    msg = {"role": "user", "content": f"Tell me a story about the number {i}."}
    return {"model": NAME, "messages": [msg], "max_tokens": max_tokens, "temperature": 0, **extra}


def ttft(client: openai.OpenAI, i: int, max_tokens: int) -> float:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(**chat_body(i, max_tokens), stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content is not None:
            first = time.perf_counter() - t0
    return first if first is not None else float("nan")


def measure(client: openai.OpenAI, n: int, max_tokens: int) -> list[float]:
    return [ttft(client, i, max_tokens) for i in range(n)]


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def running(url: str) -> float:
    return metric(url, "herd_num_requests_running")


def background_rate(url: str, args, measure_fn) -> tuple[list[float], float]:
    """Interactive TTFTs, and the background's generated tokens per second meanwhile (the
    interactive requests' own tokens taken out)."""
    tokens0, t0 = metric(url, "herd_generation_tokens_total"), time.perf_counter()
    samples = measure_fn()
    elapsed = time.perf_counter() - t0
    tokens = metric(url, "herd_generation_tokens_total") - tokens0
    return samples, (tokens - len(samples) * args.max_tokens) / elapsed


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def with_batch(client, url, args, measure_fn) -> tuple[list[float], float]:
    lines = [
        {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": chat_body(i, args.batch_tokens, ignore_eos=True)}
        for i in range(args.batch_lines)
    ]  # fmt: skip
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait(lambda: running(url) >= args.concurrency, 120, "batch lines running")
    result = background_rate(url, args, measure_fn)
    client.batches.cancel(batch.id)
    wait(lambda: client.batches.retrieve(batch.id).status == "cancelled", 120, "cancelled")
    return result


def with_equal_load(client, url, args, measure_fn) -> tuple[list[float], float]:
    stop = threading.Event()

    def loop(k: int) -> None:
        bg = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        while not stop.is_set():
            body = chat_body(k, args.batch_tokens)
            bg.chat.completions.create(**body, extra_body={"ignore_eos": True})

    threads = [
        threading.Thread(target=loop, args=(k,), daemon=True) for k in range(args.concurrency)
    ]
    for t in threads:
        t.start()
    wait(lambda: running(url) >= args.concurrency, 120, "background requests running")
    try:
        return background_rate(url, args, measure_fn)
    finally:
        stop.set()
        for t in threads:
            t.join()


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return f"p50 {statistics.median(xs) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms (n={len(xs)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=10, help="interactive requests per condition")
    p.add_argument("--max-tokens", type=int, default=8, help="interactive max_tokens")
    p.add_argument("--concurrency", type=int, default=4, help="batch lines (and engine slots)")
    p.add_argument("--batch-lines", type=int, default=200)
    p.add_argument("--batch-tokens", type=int, default=256)
    p.add_argument("--json", help="write the samples here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    model = write_demo_model(tmp / "model", **MODEL)
    replica = ReplicaProcess(
        model, "--dtype", "float32", "--device", "cpu", "--served-model-name", NAME,
        "--max-num-seqs", str(args.concurrency), "--batch-dir", str(tmp / "batches"),
        "--batch-concurrency", str(args.concurrency),
    ).wait_ready(300)  # fmt: skip
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    results: dict[str, list[float]] = {"idle": [], "batch": [], "equal": []}
    rates: dict[str, list[float]] = {"batch": [], "equal": []}
    try:
        measure(client, 3, args.max_tokens)  # warm the path
        for r in range(args.rounds):
            run = lambda: measure(client, args.requests, args.max_tokens)  # noqa: E731
            results["idle"] += run()
            for name, fn in (("batch", with_batch), ("equal", with_equal_load)):
                samples, rate = fn(client, replica.url, args, run)
                results[name] += samples
                rates[name].append(rate)
            print(f"round {r + 1}: " + "; ".join(f"{k} {summary(v)}" for k, v in results.items()))
    finally:
        replica.stop()
    for name, xs in results.items():
        print(f"{name:6s} TTFT {summary(xs)}")
    for name, xs in rates.items():
        print(f"{name:6s} background tok/s while measured: {', '.join(f'{x:.0f}' for x in xs)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ttft_s": results, "background_tok_s": rates}))


if __name__ == "__main__":
    main()
