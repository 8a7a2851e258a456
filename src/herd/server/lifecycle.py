"""A replica's life: startup phases (bind, load engine, warm up) logged with durations, readiness,
bounded admission, and SIGTERM drain (refuse new work, finish in-flight, exit 0)."""

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from herd.protocol.deadlines import apply_head_deadline
from herd.protocol.tls import maybe_server_context
from herd.server.errors import APIError

log = logging.getLogger("herd.server")


@dataclass
class Ticket:
    """One admitted request. `queued` until its first output, then running until released."""

    tokens: int
    queued: bool = True


class Admission:
    """Bounds the work a replica holds that has not started yet: past `max_requests` queued
    requests or `max_tokens` queued prompt tokens a request gets 429 with Retry-After, so a
    gateway retries elsewhere instead of the queue growing without limit."""

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.queued = 0
        self.queued_tokens = 0
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, tokens: int) -> Ticket:
        if self.queued >= self.max_requests:
            raise APIError(
                429,
                f"server queue is full ({self.queued} requests waiting, limit {self.max_requests})",
                code="queue_full",
                retry_after=1,
            )
        if self.queued and self.queued_tokens + tokens > self.max_tokens:
            raise APIError(
                429,
                f"server queue is full ({self.queued_tokens} prompt tokens waiting, "
                f"limit {self.max_tokens})",
                code="queue_full",
                retry_after=1,
            )
        self.queued += 1
        self.queued_tokens += tokens
        self.in_flight += 1
        self._idle.clear()
        return Ticket(tokens)

    def started(self, ticket: Ticket) -> None:
        if ticket.queued:
            ticket.queued = False
            self.queued -= 1
            self.queued_tokens -= ticket.tokens

    def release(self, ticket: Ticket) -> None:
        self.started(ticket)
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class ServerState:
    """starting -> ready -> draining; /ready is 200 only while ready."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.phases: dict[str, float] = {}  # startup phase -> seconds
        # Awaited when draining begins, before in-flight requests are waited for (the Batch
        # API's runner stops there: its lines run again after a restart, so none holds a drain).
        self.on_drain: list[Callable[[], Awaitable[None]]] = []

    def phase_done(self, name: str, seconds: float) -> None:
        self.phases[name] = seconds
        log.info("startup: %s took %.3f s", name, seconds)

    def check_accepting(self) -> None:
        if self.phase == "ready":
            return
        why = "is draining (shutting down)" if self.phase == "draining" else "is still starting"
        raise APIError(503, f"replica {why}; retry on another replica", retry_after=1)


# The app keys of what this module owns; `herd.server.app` stores them (no import back).
STATE = web.AppKey("state", ServerState)
ADMISSION = web.AppKey("admission", Admission)


async def serve(app, engine, config) -> int:
    """Bind, load and warm the engine, serve until SIGTERM/SIGINT, drain, return the exit code."""
    state: ServerState = app[STATE]
    admission: Admission = app[ADMISSION]
    t0 = time.perf_counter()
    ssl_context = maybe_server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    apply_head_deadline(runner, config.head_timeout)
    site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else config.port
    state.phase_done("bind", time.perf_counter() - t0)
    scheme = "https" if ssl_context else "http"
    log.info("herd replica listening on %s://%s:%d", scheme, config.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(engine.start())
    await asyncio.wait(
        [starting, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED"
    )
    if starting.done() and starting.exception() is None:
        for name, seconds in engine.phases.items():
            state.phase_done(name, seconds)
        state.phase = "ready"
        log.info("startup: ready after %.3f s", time.perf_counter() - t0)
        await stop.wait()
    elif starting.done():
        log.error("engine failed to start: %s", starting.exception())
        await runner.cleanup()
        return 1

    state.phase = "draining"
    for hook in state.on_drain:
        await hook()
    log.info(
        "draining: %d request(s) in flight, up to %.1f s", admission.in_flight, config.drain_timeout
    )
    t_drain = time.perf_counter()
    if not await admission.wait_idle(config.drain_timeout):
        log.warning("drain timeout: aborting %d request(s)", admission.in_flight)
        engine.abort_all()
        await admission.wait_idle(5.0)
    log.info("drained in %.3f s; exiting", time.perf_counter() - t_drain)
    await runner.cleanup()
    await engine.stop()
    return 0
