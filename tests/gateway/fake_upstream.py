"""A controllable fake OpenAI-compatible replica, run as its own process on loopback.

    python tests/gateway/fake_upstream.py --port P [--name N] [--metrics herd|vllm|none]

POST /control {"mode": ..., "times": n, "delay_s": s, "token_delay_s": s, "ready": bool}
sets how the next `times` completion requests behave (mode: ok, error500, error503, garbage,
hang, die_midstream, truncate, bad_event, crlf, cr: events framed with CRLF or CR); GET /stats counts calls. Answers name the replica in
`system_fingerprint`. It simulates a prefix cache (16-character blocks, bounded LRU) and exports
its counters under herd's or vLLM's metric names. SIGTERM drains like a real replica."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
from collections import OrderedDict

from aiohttp import web

MODEL = "fake-model"
BLOCK = 16


class Fake:
    def __init__(self, name: str, metrics: str):
        self.name = name
        self.metrics = metrics
        self.ready = True
        self.draining = False
        self.mode = "ok"
        self.times = 0  # requests left in `mode`; then back to ok
        self.delay_s = 0.0
        self.token_delay_s = 0.0
        self.calls = 0
        self.last_body: dict | None = None  # the last completion body received (as forwarded)
        self.ready_probes = 0  # GET /ready answered: lets a test know the gateway has looked
        self.in_flight = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def take_mode(self) -> str:
        if self.times > 0:
            self.times -= 1
            mode = self.mode
            if self.times == 0:
                self.mode = "ok"
            return mode
        return "ok"

    def touch_prefix(self, prompt: str) -> None:
        parent = 0
        for i in range(0, len(prompt) - BLOCK + 1, BLOCK):
            parent = hash((parent, prompt[i : i + BLOCK]))
            self.prefix_queries += 1
            if parent in self.blocks:
                self.prefix_hits += 1
                self.blocks.move_to_end(parent)
            else:
                self.blocks[parent] = None
                if len(self.blocks) > 4096:
                    self.blocks.popitem(last=False)


def prompt_of(body: dict) -> str:
    if "messages" in body:
        return "".join(f"{m['role']}:{m['content']}\n" for m in body["messages"])
    return body.get("prompt", "")


def tokens_for(fake: Fake, body: dict, n: int) -> list[str]:
    sampled = body.get("temperature", 1.0) != 0 and body.get("seed") is None
    salt = random.random() if sampled else 0
    base = abs(hash((prompt_of(body), salt))) % 1000
    return [f" t{(base + i) % 1000}" for i in range(n)]


async def completion(request: web.Request) -> web.StreamResponse:
    fake: Fake = request.app["fake"]
    fake.calls += 1
    body = await request.json()
    fake.last_body = body
    chat = request.path.endswith("chat/completions")
    if body.get("model") != MODEL:
        err = {
            "message": f"model {body.get('model')!r} not found",
            "type": "not_found_error",
            "param": "model",
            "code": None,
        }
        return web.json_response({"error": err}, status=404)
    if fake.draining:
        return web.json_response({"error": {"message": "draining"}}, status=503)
    mode = fake.take_mode()
    fake.in_flight += 1
    try:
        if fake.delay_s:
            await asyncio.sleep(fake.delay_s)
        if mode == "error500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "error503":
            return web.json_response({"error": {"message": "busy"}}, status=503)
        if mode == "garbage":
            return web.Response(text="<html>definitely not json", content_type="application/json")
        if mode == "hang":
            await asyncio.sleep(3600)
        fake.touch_prefix(prompt_of(body))
        n = body.get("max_tokens") or 8
        toks = tokens_for(fake, body, n)
        if body.get("stream"):
            return await stream(request, fake, body, chat, toks, mode)
        return web.json_response(answer(fake, body, chat, toks))
    finally:
        fake.in_flight -= 1


def head(fake: Fake, chat: bool, chunk: bool) -> dict:
    obj = "chat.completion" if chat else "text_completion"
    return {
        "id": "cmpl-fake",
        "object": obj + (".chunk" if chunk and chat else ""),
        "created": 1,
        "model": MODEL,
        "system_fingerprint": fake.name,
    }


def usage(body: dict, n: int) -> dict:
    p = len(prompt_of(body).split())
    return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


def answer(fake: Fake, body: dict, chat: bool, toks: list[str]) -> dict:
    text = "".join(toks)
    choice = {"index": 0, "finish_reason": "length"}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return {**head(fake, chat, False), "choices": [choice], "usage": usage(body, len(toks))}


async def stream(request, fake: Fake, body: dict, chat: bool, toks: list[str], mode: str):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    eol = {"crlf": b"\r\n", "cr": b"\r"}.get(mode, b"\n")  # the SSE spec allows all three
    if eol != b"\n":
        await resp.write(b": keep-alive" + eol + eol)

    async def send(obj) -> None:
        await resp.write(b"data: " + json.dumps(obj).encode() + eol + eol)

    for i, tok in enumerate(toks):
        if i == 2 and mode == "die_midstream":
            request.transport.abort()  # connection reset mid-stream
            return resp
        if i == 2 and mode == "bad_event":
            await resp.write(b"data: {not json\n\n")
        if i == 2 and mode == "truncate":
            await resp.write_eof()  # a clean close without [DONE]
            return resp
        last = i == len(toks) - 1
        delta = {"content": tok} if chat else None
        choice = {"index": 0, "finish_reason": "length" if last else None}
        choice.update({"delta": delta} if chat else {"text": tok})
        await send({**head(fake, chat, True), "choices": [choice]})
        if fake.token_delay_s:
            await asyncio.sleep(fake.token_delay_s)
    if (body.get("stream_options") or {}).get("include_usage"):
        await send({**head(fake, chat, True), "choices": [], "usage": usage(body, len(toks))})
    await resp.write(b"data: [DONE]" + eol + eol)
    await resp.write_eof()
    return resp


async def control(request: web.Request) -> web.Response:
    fake: Fake = request.app["fake"]
    data = await request.json()
    for k in ("mode", "times", "delay_s", "token_delay_s", "ready", "calls"):
        if k in data:
            setattr(fake, k, data[k])
    if "mode" in data and "times" not in data:
        fake.times = 1 << 30
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    fake: Fake = request.app["fake"]
    return web.json_response(
        {
            "name": fake.name,
            "calls": fake.calls,
            "ready_probes": fake.ready_probes,
            "in_flight": fake.in_flight,
            "prefix_hits": fake.prefix_hits,
            "prefix_queries": fake.prefix_queries,
            "last_body": fake.last_body,
        }
    )


async def ready(request: web.Request) -> web.Response:
    fake: Fake = request.app["fake"]
    fake.ready_probes += 1
    ok = fake.ready and not fake.draining
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    fake: Fake = request.app["fake"]
    if fake.metrics == "none":
        raise web.HTTPNotFound()
    if fake.metrics == "vllm":
        lines = [
            f'vllm:num_requests_running{{model_name="{MODEL}"}} {fake.in_flight}',
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0',
            f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.5',
            f'vllm:prefix_cache_queries_total{{model_name="{MODEL}"}} {fake.prefix_queries}',
            f'vllm:prefix_cache_hits_total{{model_name="{MODEL}"}} {fake.prefix_hits}',
        ]
    else:
        lines = [
            "# TYPE herd_num_requests_running gauge",
            f"herd_num_requests_running {fake.in_flight}",
            "herd_num_requests_waiting 0",
            "herd_kv_cache_usage_ratio 0.25",
            f"herd_prefix_cache_queries_total {fake.prefix_queries}",
            f"herd_prefix_cache_hits_total {fake.prefix_hits}",
        ]
    return web.Response(text="\n".join(lines) + "\n")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def main(args) -> None:
    fake = Fake(args.name, args.metrics)
    app = web.Application()
    app["fake"] = fake
    app.router.add_post("/v1/completions", completion)
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/control", control)
    app.router.add_get("/stats", stats)
    app.router.add_get("/ready", ready)
    app.router.add_get("/health", lambda r: web.json_response({"status": "ok"}))
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await asyncio.sleep(args.startup_delay)
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    fake.draining = True  # /ready 503, new requests 503, in-flight ones finish
    while fake.in_flight:
        await asyncio.sleep(0.02)
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--metrics", default="herd", choices=["herd", "vllm", "none"])
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--model", default=None)  # accepted so fleet templates can pass it
    asyncio.run(main(parser.parse_args()))
