"""Forward one request to a replica and stream its answer back, failing over when allowed.

Until the client has received a byte, any replica failure (connect error, 5xx, reset, an
invalid body, silence) is retried on another replica within `max_attempts` and the retry
budget. Once a stream has begun, a herd replica's failure is resumed on another replica
(`herd.gateway.failover`); any other replica's failure ends it with an SSE error event, never
silently. A client that stops reading its stream for `client_write_timeout_s` is dropped and
the upstream request closed, so the replica frees its blocks."""

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
from herd.gateway.failover import StreamResume, resumable
from herd.gateway.policy import screen_answer
from herd.gateway.replicas import Replica
from herd.gateway.request_info import RequestInfo
from herd.gateway.stream import StreamAssembler
from herd.protocol.sse import Event, SSEParser, encode_json


class ClientGone(Exception):
    """The client stopped reading (write timed out) or closed its connection."""


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
        resume = None
        if self.config.resume_streams and resumable(info.payload):
            resume = StreamResume(info.endpoint, info.payload)
        try:
            async with asyncio.timeout(self.config.first_byte_timeout_s):
                resp = await self.session.post(
                    f"{replica.url}/v1/{info.endpoint}",
                    data=resume.upstream_body()
                    if resume
                    else info.body_for(replica.fallback_model),
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
                return await self._stream(
                    request, info, replica, resp, outcome, headers, sent_at, resume
                )
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

    async def _stream(self, request, info, replica, resp, outcome, headers, sent_at, resume):
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
                    first = _render(assembler.feed_events(chunk), resume)
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
                await self._write(response, first)
            outcome.ttft_s = time.perf_counter() - outcome.received_at
            outcome.added_s += time.perf_counter() - got_at
            error = await self._pump(resp, response, assembler, resume)
            if error is not None:
                replicas.record_failure(replica)
            if error is not None and resume is not None and resume.ready:
                error = await self._resume(info, resume, assembler, response, {replica.url})
            if error is not None:
                outcome.status, outcome.error = error.status, error.message
                await self._write(response, error.sse_event())
            elif assembler.blocked:
                outcome.filtered = True
                await self._write(response, assembler.filtered_end())
        except (ClientGone, ConnectionResetError, aiohttp.ClientConnectionResetError):
            outcome.status, outcome.error = 499, "client closed the connection or stopped reading"
            return response
        if error is None and assembler.upstream_error is not None:
            outcome.status, outcome.error = 502, str(assembler.upstream_error.get("message"))
        elif error is None:
            outcome.response = assembler.response()  # None when blocked: nothing to cache
        outcome.prompt_tokens, outcome.completion_tokens = assembler.usage()
        await response.write_eof()
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        """Write within `client_write_timeout_s`: a client that stops reading must not hold the
        replica's blocks (the caller closes the upstream request)."""
        try:
            async with asyncio.timeout(self.config.client_write_timeout_s):
                await response.write(data)
        except TimeoutError:
            raise ClientGone() from None

    async def _pump(
        self, resp, response, assembler: StreamAssembler, resume: StreamResume | None,
        parser: SSEParser | None = None,
    ) -> GatewayError | None:  # fmt: skip
        """Copy events until [DONE]; a broken, silent or garbled upstream returns an error.
        With `parser` (a continuation) events are parsed there and rewritten before the
        assembler accounts them; otherwise the assembler parses what the replica sent."""
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
                if parser is not None:
                    events = parser.feed(chunk) if chunk else parser.close()
                    out = _render(events, resume)
                    assembler.feed(out)
                    if assembler.blocked:
                        return None  # the policy refused this continuation's text
                else:
                    events = assembler.feed_events(chunk) if chunk else assembler.close_events()
                    out = _render(events, resume)
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
                await self._write(response, out)
        return None

    async def _resume(
        self, info: RequestInfo, resume: StreamResume, assembler, response, tried: set[str]
    ) -> GatewayError | None:
        """Continue a broken herd stream on other replicas (up to `max_attempts`)."""
        error = GatewayError(502, "replica failed mid-stream", code="replica_error")
        for _ in range(self.config.max_attempts):
            continuation = resume.continuation()
            if continuation is None:  # every token was sent; only the ending was lost
                return GatewayError(502, "replica failed before the stream ended")
            endpoint, body = continuation
            if not self.dispatcher.retry_budget.try_spend():  # a resume is a retry
                return error
            try:
                replica = await self.dispatcher.acquire(info.route, tried)
            except GatewayError as exc:
                return exc
            tried.add(replica.url)
            self.on_retry()
            try:
                async with asyncio.timeout(self.config.first_byte_timeout_s):
                    resp = await self.session.post(
                        f"{replica.url}/v1/{endpoint}", data=body,
                        headers={"Content-Type": "application/json"},
                    )  # fmt: skip
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.dispatcher.release(replica)
                self.dispatcher.replicas.record_failure(replica)
                error = GatewayError(502, f"resume failed: {_describe(exc)}", code="replica_error")
                continue
            try:
                if resp.status != 200:
                    error = GatewayError(502, f"resume answered {resp.status}")
                    continue
                error = await self._pump(resp, response, assembler, resume, SSEParser())
                if error is None:
                    return None
                self.dispatcher.replicas.record_failure(replica)
            finally:
                resp.close()
                self.dispatcher.release(replica)
        return error


def _render(events: list[Event], resume: StreamResume | None) -> bytes:
    """Events for the client: as the replica framed them, or rewritten by the resume state."""
    if resume is None:
        return b"".join(e.raw for e in events)
    out = []
    for e in events:
        if e.data is None or e.is_done:
            out.append(e.raw)
            continue
        obj = e.json()
        if not isinstance(obj, dict):
            out.append(e.raw)
            continue
        # Re-encoded only when rewritten: otherwise the replica's framing passes unchanged.
        rewrite = resume.rewrites(obj)
        obj = resume.render(obj)
        out.append(encode_json(obj) if rewrite else e.raw)
    return b"".join(out)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "replica timed out"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
