"""One Ray Serve replica of herd: the actor starts a real `herd replica` on a free loopback port
and forwards every HTTP request Serve hands it to that server, streams included. Imported by Ray's
workers only (Ray and Starlette are imported lazily: the `ray` extra is optional)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp

from herd.fleet.supervisor import HERD_REPLICA, free_port
from herd.protocol.errors import error_body

# What a replica needs from the client's request, and what the client needs from its answer; the
# rest (hop-by-hop, lengths and encodings Starlette recomputes) stays behind.
FORWARDED = ("content-type", "authorization", "x-request-id", "accept")
RETURNED = ("x-request-id", "retry-after", "content-type")
HOST = "127.0.0.1"  # the herd server is reached only from its own actor


def _die_with_parent() -> None:
    """In the herd replica: SIGTERM when the thread that started it ends, i.e. when the actor
    dies (a SIGKILLed actor must not leave a replica holding its GPU)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class HerdReplica:
    """The class behind herd's Serve deployment. Promises: the constructor returns (so Serve routes
    to it) only once its `herd replica` answers /ready; that process dies with the actor; Serve's
    health check fails as soon as it has exited, so Serve replaces the replica; on graceful shutdown
    (Serve has already let in-flight requests finish) it is SIGTERMed and drains."""

    def __init__(
        self,
        model: str,
        args: list[str],
        command: list[str] | None = None,
        startup_timeout_s: float = 300.0,
        drain_timeout_s: float = 60.0,
    ) -> None:
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.drain_timeout_s = drain_timeout_s
        values = {"model": model, "host": HOST, "port": self.port}
        argv = [part.format(**values) for part in (command or HERD_REPLICA)] + list(args)
        self.proc = self._start(argv)
        self._session: aiohttp.ClientSession | None = None
        self._wait_ready(startup_timeout_s)

    @staticmethod
    def _start(argv: list[str]) -> subprocess.Popen:
        # A thread of our own starts the process and lives exactly as long as it: PDEATHSIG fires
        # when the *thread* that forked exits, and Serve's threads are not ours to rely on.
        started: list[subprocess.Popen] = []
        ready = threading.Event()

        def keep() -> None:
            try:
                started.append(subprocess.Popen(argv, preexec_fn=_die_with_parent))
            finally:
                ready.set()
            if started:
                started[0].wait()

        threading.Thread(target=keep, name="herd-replica-keeper", daemon=True).start()
        ready.wait()
        if not started:
            raise RuntimeError(f"cannot start the herd replica: {argv}")
        return started[0]

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herd replica exited with {self.proc.returncode} while loading")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.proc.kill()
        raise TimeoutError(f"herd replica not ready after {timeout_s} s")

    def check_health(self) -> None:
        """Serve's health check: a replica whose herd server exited is replaced."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"herd replica exited with {self.proc.returncode}")

    async def __call__(self, request: Any) -> Any:
        """Forward one Starlette request to the herd server; its answer back unchanged (an SSE
        stream chunk by chunk). If the herd server cannot be reached: 503 + Retry-After, which a
        gateway retries elsewhere without holding it against the replica."""
        from starlette.responses import Response, StreamingResponse

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        url = self.url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        try:
            resp = await self._session.request(
                request.method, url, data=await request.body(), headers=headers
            )
        except (aiohttp.ClientError, OSError) as exc:
            body = error_body(503, f"herd replica unreachable: {exc}", code="replica_unavailable")
            return Response(json.dumps(body), 503, {"Retry-After": "1"}, "application/json")
        out = {k: v for k, v in resp.headers.items() if k.lower() in RETURNED}
        if resp.content_type == "text/event-stream":
            return StreamingResponse(_relay(resp), resp.status, out)
        try:
            data = await resp.read()
        finally:
            resp.release()
        return Response(data, resp.status, out)

    def __del__(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # herd replica drains: nothing is in flight by now, so this is quick
        try:
            proc.wait(self.drain_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _relay(resp: aiohttp.ClientResponse):
    """The upstream SSE stream's bytes as they come; closing the generator (client gone) closes
    the upstream connection, which aborts the request on the herd server."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        resp.close()
