"""A small streaming OpenAI-style server for bench tests, on 127.0.0.1 in its own thread.

It sleeps `ttft_s` before the first token and `per_token_s` per token, sends `tokens_per_chunk`
tokens per SSE chunk, and records what it served so tests can check the bench's numbers."""

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Served:
    path: str
    arrival: float  # perf_counter when the handler started
    first_token: float = 0.0
    end: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    body: dict = field(default_factory=dict)


@dataclass
class FakeConfig:
    ttft_s: float = 0.02
    per_token_s: float = 0.002
    tokens_per_chunk: int = 1
    send_usage: bool = True
    cached_fraction: float = 0.0  # share of prompt tokens reported as cached (usage and /metrics)
    fail_every: int = 0  # every Nth request answers HTTP 500
    api_key: str = ""
    metrics: bool = True


class FakeServer:
    def __init__(self, config: FakeConfig | None = None):
        self.config = config or FakeConfig()
        self.served: list[Served] = []
        self.counter = 0
        self.hit_tokens = 0
        self.query_tokens = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        if self.config.metrics:
            app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE herd_prefix_cache_hits counter\n"
            f"herd_prefix_cache_hits_total {self.hit_tokens}\n"
            "# TYPE herd_prefix_cache_queries counter\n"
            f"herd_prefix_cache_queries_total {self.query_tokens}\n"
            "# TYPE herd_requests counter\n"
            f"herd_requests_total {len(self.served)}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def complete(self, request: web.Request) -> web.StreamResponse:
        rec = Served(path=request.path, arrival=time.perf_counter())
        cfg = self.config
        self.counter += 1
        if cfg.api_key and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            return web.json_response({"error": {"message": "bad key", "type": "auth"}}, status=401)
        if cfg.fail_every and self.counter % cfg.fail_every == 0:
            return web.json_response(
                {"error": {"message": "boom", "type": "server_error"}}, status=500
            )
        body = await request.json()
        rec.body = body
        text = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        rec.prompt_tokens = len(text.split())
        rec.completion_tokens = int(body.get("max_tokens") or 16)
        cached = int(rec.prompt_tokens * cfg.cached_fraction)
        self.hit_tokens += cached
        self.query_tokens += rec.prompt_tokens
        self.served.append(rec)
        usage = {
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "total_tokens": rec.prompt_tokens + rec.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        chat = request.path.endswith("chat/completions")
        if not body.get("stream"):
            return await self._whole(rec, chat, usage)
        return await self._stream(request, rec, chat, usage, body)

    async def _whole(self, rec: Served, chat: bool, usage: dict) -> web.Response:
        await asyncio.sleep(
            self.config.ttft_s + self.config.per_token_s * (rec.completion_tokens - 1)
        )
        text = " tok" * rec.completion_tokens
        choice = {"index": 0, "finish_reason": "length"}
        choice.update(
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        )
        rec.first_token = rec.end = time.perf_counter()
        body = {"id": "x", "choices": [choice]}
        if self.config.send_usage:
            body["usage"] = usage
        return web.json_response(body)

    async def _stream(
        self, request, rec: Served, chat: bool, usage: dict, body: dict
    ) -> web.StreamResponse:
        cfg = self.config
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(payload: dict) -> None:
            await resp.write(f"data: {json.dumps(payload)}\n\n".encode())

        if chat:  # role-only first chunk: carries no content, so it must not count as TTFT
            await send({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        await asyncio.sleep(cfg.ttft_s)
        left = rec.completion_tokens
        while left > 0:
            k = min(cfg.tokens_per_chunk, left)
            if left < rec.completion_tokens:
                await asyncio.sleep(cfg.per_token_s * k)
            left -= k
            text = " tok" * k
            choice = {"index": 0, "finish_reason": "length" if left == 0 else None}
            choice.update({"delta": {"content": text}} if chat else {"text": text})
            if not rec.first_token:
                rec.first_token = time.perf_counter()
            await send({"choices": [choice]})
        rec.end = time.perf_counter()
        if cfg.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            await send({"choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
