"""Forward one request to a replica and stream its answer back, failing over when allowed.

Until the client has received a byte, any replica failure (connect error, 5xx, reset, an
invalid body, silence) is retried on another replica within `max_attempts` and the retry
budget. Once a stream has begun, a failure ends it with an SSE error event, never silently."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from herd.gateway.config import ProxyConfig
from herd.gateway.dispatch import Dispatcher
from herd.gateway.errors import GatewayError
from herd.gateway.policy import screen_answer
from herd.gateway.replicas import Replica
from herd.gateway.request_info import RequestInfo
from herd.gateway.stream import StreamAssembler


@dataclass
class Outcome:
    """What happened to one request; filled in as it goes, read by metrics, audit and cache."""

    received_at: float = field(default_factory=time.perf_counter)
    replica: str | None = None
    status: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # time to the first byte the client received
    added_s: float = 0.0  # time spent in the gateway, not waiting on a replica
    response: dict[str, Any] | None = None  # the whole answer as one JSON object (cacheable)
    cache_key: str | None = None  # set on a cache miss: store the answer under it
    error: str | None = None
    filtered: bool = False  # the content policy cut the answer (finish_reason content_filter)


class Retryable(Exception):
    """An attempt failed before the client got anything; another replica may try."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Proxy:
    """Forwards one request to a replica and its answer back: retries on another replica before the
    first byte is sent, copies a stream event by event (checking and accounting it), turns a
    failure after the first byte into one SSE error event, and records usage, cache and audit.
    Every request ends in exactly one outcome."""

    def __init__(self, session: aiohttp.ClientSession, dispatcher: Dispatcher, config: ProxyConfig):
        self.session = session
        self.dispatcher = dispatcher
        self.config = config
        self.on_retry = lambda: None  # metrics hook

    async def forward(
        self, request: web.Request, info: RequestInfo, outcome: Outcome, headers: dict[str, str]
    ) -> web.StreamResponse:
        dispatcher = self.dispatcher
        dispatcher.retry_budget.deposit()
        tried: set[str] = set()
        last: Retryable | None = None
        for attempt in range(self.config.max_attempts):
            if attempt and not dispatcher.retry_budget.try_spend():
                break
            if attempt:
                self.on_retry()
            replica = await dispatcher.acquire(info.route, tried)
            tried.add(replica.url)
            outcome.replica, outcome.attempts = replica.url, attempt + 1
            try:
                return await self._attempt(request, info, replica, outcome, headers)
            except Retryable as exc:
                last = exc
            finally:
                dispatcher.release(replica)
        assert last is not None
        code = "replica_unavailable" if last.status == 503 else "replica_error"
        raise GatewayError(
            502 if last.status != 503 else 503, f"upstream failed: {last}", code=code
        )

    async def _attempt(
        self,
        request: web.Request,
        info: RequestInfo,
        replica: Replica,
        outcome: Outcome,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        replicas = self.dispatcher.replicas
        sent_at = time.perf_counter()
        outcome.added_s += sent_at - outcome.received_at if outcome.attempts == 1 else 0.0
        try:
            async with asyncio.timeout(self.config.first_byte_timeout_s):
                resp = await self.session.post(
                    f"{replica.url}/v1/{info.endpoint}",
                    data=info.body_for(replica.fallback_model),
                    headers={
                        "Content-Type": "application/json",
                        "X-Request-Id": headers["x-request-id"],
                    },
                )
        except aiohttp.ClientConnectorError as exc:
            replicas.record_failure(replica, definitive=True)  # nothing listens there
            raise Retryable(502, f"cannot connect to a replica ({exc.os_error})") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            replicas.record_failure(replica)
            raise Retryable(504 if isinstance(exc, TimeoutError) else 502, _describe(exc)) from None
        try:
            if resp.status >= 500 or resp.status == 429:
                # 503/429: alive but busy or draining, so not held against its health.
                if resp.status not in (503, 429):
                    replicas.record_failure(replica)
                raise Retryable(resp.status, f"replica answered {resp.status}")
            if info.stream and resp.status == 200:
                return await self._stream(request, info, replica, resp, outcome, headers, sent_at)
            return await self._unary(info, replica, resp, outcome, headers, sent_at)
        finally:
            resp.close()

    async def _unary(self, info, replica, resp, outcome, headers, sent_at) -> web.Response:
        replicas = self.dispatcher.replicas
        try:
            async with asyncio.timeout(self.config.idle_timeout_s):
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            replicas.record_failure(replica)
            raise Retryable(502, _describe(exc)) from None
        got_at = time.perf_counter()
        if resp.status != 200:
            # A client error (4xx) is the replica's answer to a bad request: pass it on as is.
            replicas.record_success(replica, got_at - sent_at)
            outcome.status = resp.status
            return web.Response(
                status=resp.status, body=body, content_type="application/json", headers=headers
            )
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or "choices" not in data:
                raise ValueError("no choices")
        except ValueError:
            replicas.record_failure(replica)
            raise Retryable(502, "a replica returned an invalid response body") from None
        replicas.record_success(replica, got_at - sent_at)
        if info.screen is not None and await screen_answer(
            data, info.screen, info.endpoint == "chat/completions"
        ):
            body, outcome.filtered = json.dumps(data).encode(), True
        usage = data.get("usage") or {}
        outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
        outcome.response = data
        outcome.status = 200
        outcome.ttft_s = got_at - outcome.received_at
        outcome.added_s += time.perf_counter() - got_at
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _stream(self, request, info, replica, resp, outcome, headers, sent_at):
        replicas = self.dispatcher.replicas
        assembler = StreamAssembler(info.endpoint, info.screen)
        # Hold the client's response until the first complete event arrived and parsed:
        # until then a failure is invisible to the client and can be retried.
        try:
            async with asyncio.timeout(self.config.first_byte_timeout_s):
                first = b""
                while not first and not assembler.blocked:
                    chunk = await resp.content.readany()
                    if not chunk:
                        raise aiohttp.ClientPayloadError("stream ended before the first event")
                    first = assembler.feed(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            replicas.record_failure(replica)
            raise Retryable(502, _describe(exc)) from None
        got_at = time.perf_counter()
        replicas.record_success(replica, got_at - sent_at)
        if first and info.screen is not None and not await info.screen.release(assembler.done):
            assembler.block()
            first = b""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        outcome.status = 200
        try:
            await response.prepare(request)
            if first:
                await response.write(first)
            outcome.ttft_s = time.perf_counter() - outcome.received_at
            outcome.added_s += time.perf_counter() - got_at
            error = await self._pump(resp, response, assembler)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            outcome.status, outcome.error = 499, "client closed the connection"
            return response
        if error is not None:
            replicas.record_failure(replica)
            outcome.status, outcome.error = error.status, error.message
            try:
                await response.write(error.sse_event())
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                return response
        elif assembler.blocked:
            outcome.filtered = True
            await response.write(assembler.filtered_end())
        elif assembler.upstream_error is not None:
            outcome.status, outcome.error = 502, str(assembler.upstream_error.get("message"))
        else:
            outcome.response = assembler.response()
        outcome.prompt_tokens, outcome.completion_tokens = assembler.usage()
        await response.write_eof()
        return response

    async def _pump(self, resp, response, assembler: StreamAssembler) -> GatewayError | None:
        """Copy events until [DONE]; a broken, silent or garbled upstream returns an error."""
        content = resp.content
        idle = self.config.idle_timeout_s
        while not assembler.done:
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except (aiohttp.ClientError, OSError) as exc:
                return GatewayError(
                    502, f"replica failed mid-stream: {_describe(exc)}", code="replica_error"
                )
            except TimeoutError:
                return GatewayError(
                    504, f"replica silent for {idle:g}s mid-stream", code="replica_timeout"
                )
            try:
                out = assembler.feed(chunk) if chunk else assembler.close()
                if not chunk and not assembler.done:
                    return GatewayError(502, "replica ended the stream early", code="replica_error")
            except ValueError as exc:
                return GatewayError(
                    502, f"replica sent an invalid event: {exc}", code="replica_error"
                )
            screen = assembler.screen
            if out and screen is not None and not await screen.release(assembler.done):
                assembler.block()  # the classifier refused what this chunk would have sent
                return None
            if out:
                await response.write(out)
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "replica timed out"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
