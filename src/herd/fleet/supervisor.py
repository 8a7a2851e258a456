"""Run N local replicas behind the gateway: start, watch, restart, roll, drain.

Each replica is a child process started from a command template on a free port; it is put in
the gateway's replica set as `loading` and turns `ready` once its /ready answers 200. A crash
marks it `down` and restarts it with exponential backoff. A rollout starts a new replica
before draining an old one (surge of one), so capacity never drops and no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from herd.fleet.config import FleetConfig
from herd.gateway.replicas import ReplicaSet, ReplicaState

log = logging.getLogger("herd.fleet")

HERD_REPLICA = [
    sys.executable, "-c", "import sys; from herd.cli import main; sys.exit(main())",
    "replica", "--model", "{model}", "--host", "{host}", "--port", "{port}",
]  # fmt: skip


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies without draining (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Slot:
    """One replica position of the fleet: the process that serves it now, its URL, and the crash
    history that sets its restart backoff. A slot outlives the processes that fill it."""

    index: int
    proc: asyncio.subprocess.Process | None = None  # the replica serving this slot now
    url: str | None = None
    started_at: float = 0.0
    crashes: int = 0  # crashes in a row: sets the restart backoff
    trial: bool = False  # a rollout's new replica not ready yet: its exit is the rollout's job


class Supervisor:
    """Runs N local replicas behind the gateway: launches them, waits for /ready before they take
    traffic, restarts crashed ones with backoff, rolls them one at a time (a new replica ready
    before the old one drains), and on stop drains every replica before killing it."""

    def __init__(
        self,
        config: FleetConfig,
        replicas: ReplicaSet,
        session: aiohttp.ClientSession,
        log_dir: str | Path,
    ):
        self.config = config
        self.replicas = replicas
        self.session = session
        self.log_dir = Path(log_dir)
        self.slots = [Slot(i) for i in range(config.replicas)]
        self.stopping = False
        self._lock = asyncio.Lock()  # one rollout or shutdown at a time
        self._tasks: set[asyncio.Task] = set()

    def command(self, port: int) -> list[str]:
        template = self.config.command or HERD_REPLICA
        values = {"model": self.config.model or "", "host": self.config.host, "port": port}
        return [part.format(**values) for part in template] + list(self.config.extra_args)

    # --- starting ---

    async def start(self) -> None:
        """Start every replica and wait until all are ready (or raise)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for slot in self.slots:
            await self._launch(slot)
        results = await asyncio.gather(*(self._wait_ready(s.url, s.proc) for s in self.slots))
        if not all(results):
            failed = [s.index for s, ok in zip(self.slots, results, strict=True) if not ok]
            raise RuntimeError(f"replica(s) {failed} did not become ready; logs in {self.log_dir}")

    async def _launch(self, slot: Slot) -> None:
        port = free_port(self.config.host)
        logfile = open(self.log_dir / f"replica-{slot.index}-{port}.log", "wb")  # noqa: SIM115
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(port), stdout=logfile, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which drains in order
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            logfile.close()
        slot.proc, slot.url, slot.started_at = (
            proc,
            f"http://{self.config.host}:{port}",
            time.monotonic(),
        )
        self.replicas.add(slot.url, ReplicaState.LOADING, pid=proc.pid)
        self._spawn(self._watch(slot, proc, slot.url))

    async def _wait_ready(self, url: str, proc: asyncio.subprocess.Process) -> bool:
        """Poll /ready until 200; False if the process exits or the startup timeout passes."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline and proc.returncode is None:
            try:
                async with self.session.get(
                    url + "/ready", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        self.replicas.set_state(url, ReplicaState.READY)
                        return True
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.1)
        if proc.returncode is None:
            log.warning(
                "replica %s not ready after %.0fs: killing it", url, self.config.startup_timeout_s
            )
            proc.kill()
        return False

    # --- crashes ---

    async def _watch(self, slot: Slot, proc: asyncio.subprocess.Process, url: str) -> None:
        code = await proc.wait()
        if self.stopping or slot.proc is not proc or slot.trial:
            return  # an intended stop (rollout or shutdown) cleans up after itself
        log.warning("replica %s (pid %s) exited with %s: restarting", url, proc.pid, code)
        self.replicas.set_state(url, ReplicaState.DOWN)
        replica = self.replicas.get(url)
        if replica is not None:
            replica.locked = True
        if time.monotonic() - slot.started_at >= self.config.stable_after_s:
            slot.crashes = 0
        delay = min(
            self.config.restart_backoff_base_s * 2**slot.crashes, self.config.restart_backoff_max_s
        )
        slot.crashes += 1
        await asyncio.sleep(delay)
        if self.stopping or slot.proc is not proc:
            return
        await self._launch(slot)
        self.replicas.remove(url)  # the new one is listed; the dead one goes
        await self._wait_ready(slot.url, slot.proc)

    # --- rolling restart and shutdown ---

    async def rollout(self) -> dict:
        """Replace every replica, one at a time: start new, wait ready, drain old."""
        async with self._lock:
            replaced = 0
            for slot in self.slots:
                if self.stopping:
                    break
                old_proc, old_url = slot.proc, slot.url
                slot.trial = True
                await self._launch(slot)
                ready = await self._wait_ready(slot.url, slot.proc)
                slot.trial = False
                if not ready:
                    # Keep the old replica: a rollout must not make things worse.
                    failed, failed_url = slot.proc, slot.url
                    slot.proc, slot.url = old_proc, old_url
                    await self._drain(failed, failed_url)
                    return {"status": "failed", "replaced": replaced, "failed_slot": slot.index}
                await self._drain(old_proc, old_url)
                replaced += 1
            return {"status": "done", "replaced": replaced}

    async def stop(self) -> None:
        """Drain every replica in order (SIGTERM, wait, SIGKILL past the drain timeout)."""
        self.stopping = True
        async with self._lock:
            for slot in self.slots:
                await self._drain(slot.proc, slot.url)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self, proc: asyncio.subprocess.Process | None, url: str | None) -> None:
        if url is not None:
            self.replicas.set_state(url, ReplicaState.DRAINING)  # no new traffic from now on
            replica = self.replicas.get(url)
            if replica is not None:
                replica.locked = True
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.config.drain_timeout_s)
            except TimeoutError:
                log.warning(
                    "replica %s did not drain in %.0fs: killing it",
                    url,
                    self.config.drain_timeout_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if url is not None:
            self.replicas.remove(url)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
