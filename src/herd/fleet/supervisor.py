"""Run local replicas behind the gateway: start, watch, restart, grow, shrink, drain.

Each replica is a child process started from a command template on a free port, for one
`Version` (model + arguments); it is put in the gateway's replica set as `loading` and turns
`ready` (or `standby`: loaded, unrouted) once its /ready answers 200. A crash marks it `down` and
restarts it with exponential backoff. Removing a replica drains it first: it gets no new traffic,
its in-flight requests finish, then it exits. Which replicas to run is decided elsewhere
(`herd.fleet.rollout`, `herd.fleet.autoscaler`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Version:
    """What a replica runs: the operator's name for it, the model, and the replica arguments.
    Two replicas of one version answer alike; the response cache never crosses versions."""

    name: str
    model: str | None
    args: tuple[str, ...] = ()


@dataclass
class Slot:
    """One replica of the fleet: the process that serves it now, its URL and version, and the
    crash history that sets its restart backoff. A slot outlives crashed processes it restarts."""

    index: int
    version: Version
    standby: bool = False  # loaded but unrouted, promoted at once when the fleet grows
    fallback: bool = False  # in the fallback pool: routed only when the main pool is full
    proc: asyncio.subprocess.Process | None = None
    url: str | None = None
    started_at: float = 0.0
    crashes: int = 0  # crashes in a row: sets the restart backoff
    retiring: bool = False  # being drained on purpose: its exit is not a crash
    ready: bool = False  # answered /ready 200 since its last launch
    phases: dict[str, float] = field(default_factory=dict)  # cold start by phase, seconds


class Supervisor:
    """Runs local replicas behind the gateway: launches them, waits for /ready before they take
    traffic, restarts crashed ones with backoff, adds and removes replicas on request (removal
    always drains), and on stop drains every replica before killing it. Promises that a replica
    is routed only once ready and that no replica it removes is killed with work in flight
    before the drain timeout."""

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
        self.version = Version("v1", config.model, tuple(config.extra_args))  # the stable one
        self.slots: list[Slot] = []
        self.stopping = False
        self.lock = asyncio.Lock()  # one rollout or shutdown at a time
        self.on_ready: Callable[[Slot, float], None] | None = None  # cold-start seconds
        self._indexes = itertools.count()
        self._tasks: set[asyncio.Task] = set()

    def command(self, port: int, version: Version) -> list[str]:
        template = self.config.command or HERD_REPLICA
        values = {"model": version.model or "", "host": self.config.host, "port": port}
        return [part.format(**values) for part in template] + list(version.args)

    def serving(self, version: Version | None = None) -> list[Slot]:
        """Routed replicas (ready or starting) of `version`, or of every version."""
        return [
            s
            for s in self.slots
            if not s.standby
            and not s.retiring
            and not s.fallback
            and (version is None or s.version == version)
        ]

    def standbys(self) -> list[Slot]:
        return [s for s in self.slots if s.standby and not s.retiring]

    # --- starting ---

    async def start(self, n: int | None = None) -> None:
        """Start `n` (default: config.replicas) replicas of the stable version; wait until all
        are ready (or raise)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        n = self.config.replicas if n is None else n
        slots = [await self.launch(self.version) for _ in range(n)]
        results = await asyncio.gather(*(self.wait_ready(s) for s in slots))
        if not all(results):
            failed = [s.index for s, ok in zip(slots, results, strict=True) if not ok]
            raise RuntimeError(f"replica(s) {failed} did not become ready; logs in {self.log_dir}")

    async def add(
        self, version: Version, standby: bool = False, fallback: bool = False
    ) -> Slot | None:
        """Launch one replica and wait until it is ready; None (and no replica left) if it
        never gets there."""
        slot = self.reserve(version, standby, fallback)
        return slot if await self.start_slot(slot) else None

    async def launch(self, version: Version, standby: bool = False) -> Slot:
        """Start one replica (loading, no traffic until ready) and return its slot at once."""
        slot = self.reserve(version, standby)
        await self._launch(slot)
        return slot

    def reserve(self, version: Version, standby: bool = False, fallback: bool = False) -> Slot:
        """A slot counted in the fleet now, its process started by `start_slot` later."""
        slot = Slot(next(self._indexes), version, standby, fallback)
        self.slots.append(slot)
        return slot

    async def start_slot(self, slot: Slot) -> bool:
        """Launch a reserved slot and wait until ready; a replica that never gets ready is
        removed (False)."""
        if slot.retiring:
            return False  # removed again before it started
        await self._launch(slot)
        if slot.retiring:  # removed while its process was starting
            await self._drain(slot.proc, slot.url)
            return False
        if await self.wait_ready(slot):
            return True
        if slot in self.slots:
            await self.retire(slot)
        return False

    async def _launch(self, slot: Slot) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port(self.config.host)
        logfile = open(self.log_dir / f"replica-{slot.index}-{port}.log", "wb")  # noqa: SIM115
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(port, slot.version), stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
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
        slot.ready = False
        state = ReplicaState.STANDBY if slot.standby else ReplicaState.LOADING
        replica = self.replicas.add(slot.url, state, pid=proc.pid, version=slot.version.name)
        replica.locked = slot.standby  # health checks must not route a standby replica
        self._spawn(self._watch(slot, proc))

    async def wait_ready(self, slot: Slot) -> bool:
        """Poll /ready until 200; False if the process exits or the startup timeout passes."""
        url, proc = slot.url, slot.proc
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline and proc.returncode is None and slot.proc is proc:
            try:
                async with self.session.get(
                    url + "/ready", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        body = await r.json(content_type=None)
                        if slot.fallback:
                            await self._name_fallback(slot)
                        self._became_ready(slot, (body or {}).get("startup") or {})
                        return True
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                pass
            await asyncio.sleep(0.1)
        if proc.returncode is None and slot.proc is proc:
            log.warning(
                "replica %s not ready after %.0fs: killing it", url, self.config.startup_timeout_s
            )
            proc.kill()
        return False

    async def _name_fallback(self, slot: Slot) -> None:
        """A fallback replica answers under its own model id: the gateway swaps it in."""
        async with self.session.get(slot.url + "/v1/models") as r:
            name = (await r.json(content_type=None))["data"][0]["id"]
        replica = self.replicas.get(slot.url)
        if replica is not None:
            replica.fallback_model = name

    def _became_ready(self, slot: Slot, startup: dict) -> None:
        total = time.monotonic() - slot.started_at
        weights, warm = float(startup.get("load_engine", 0)), float(startup.get("warm_up", 0))
        slot.phases = {
            "process": max(total - weights - warm, 0.0),
            "weights": weights,
            "warm_up": warm,
        }
        slot.ready = True
        if not slot.standby and not slot.retiring:
            self.replicas.set_state(slot.url, ReplicaState.READY)
        log.info(
            "cold start of %s (%s%s): %.1f s = process %.1f + weights %.1f + warm-up %.1f",
            slot.url, slot.version.name, ", standby" if slot.standby else "", total,
            slot.phases["process"], weights, warm,
        )  # fmt: skip
        if self.on_ready is not None:
            self.on_ready(slot, total)

    def promote(self, slot: Slot) -> None:
        """A ready standby replica takes traffic now."""
        slot.standby = False
        replica = self.replicas.get(slot.url)
        if replica is not None:
            replica.locked = False
        if slot.ready:
            self.replicas.set_state(slot.url, ReplicaState.READY)
        else:
            self.replicas.set_state(slot.url, ReplicaState.LOADING)

    # --- crashes ---

    async def _watch(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.stopping or slot.proc is not proc or slot.retiring or slot not in self.slots:
            return  # an intended stop cleans up after itself
        url = slot.url
        self.replicas.set_state(url, ReplicaState.DOWN)
        replica = self.replicas.get(url)
        if replica is not None:
            replica.locked = True
        if self.config.interruptible:
            # Spot capacity: a reclaimed replica is expected, not a crash loop: replace at once.
            log.warning("replica %s (pid %s) interrupted (exit %s): replacing", url, proc.pid, code)
            delay = 0.0
        else:
            log.warning("replica %s (pid %s) exited with %s: restarting", url, proc.pid, code)
            if time.monotonic() - slot.started_at >= self.config.stable_after_s:
                slot.crashes = 0
            base, cap = self.config.restart_backoff_base_s, self.config.restart_backoff_max_s
            delay = min(base * 2**slot.crashes, cap)
            slot.crashes += 1
        await asyncio.sleep(delay)
        if self.stopping or slot.proc is not proc or slot.retiring:
            return
        await self._launch(slot)
        self.replicas.remove(url)  # the new one is listed; the dead one goes
        await self.wait_ready(slot)

    # --- removing and shutdown ---

    def victim(self, slots: list[Slot]) -> Slot:
        """The replica cheapest to lose: one not ready yet, else the fewest requests in flight,
        then the least recently routed (its prefix cache is the coldest)."""

        def cost(slot: Slot) -> tuple:
            replica = self.replicas.get(slot.url) if slot.url else None
            if replica is None or not slot.ready:
                return (0, 0, 0.0)
            return (1, replica.observed.in_flight, replica.observed.last_request_at)

        return min(slots, key=cost)

    async def retire(self, slot: Slot) -> None:
        """Drain one replica (no new traffic, in-flight requests finish) and stop it."""
        slot.retiring = True
        if slot in self.slots:
            self.slots.remove(slot)
        await self._drain(slot.proc, slot.url)

    def retire_soon(self, slot: Slot) -> None:
        """`retire` in the background (the slot leaves the fleet's count at once)."""
        slot.retiring = True
        if slot in self.slots:
            self.slots.remove(slot)
        if slot.url is not None:
            self.replicas.set_state(slot.url, ReplicaState.DRAINING)
        self._spawn(self._drain(slot.proc, slot.url))

    def spawn(self, coro) -> None:
        """Run a fleet operation in the background; it is cancelled on stop."""
        self._spawn(coro)

    async def stop(self) -> None:
        """Drain every replica in order (SIGTERM, wait, SIGKILL past the drain timeout)."""
        self.stopping = True
        async with self.lock:
            for slot in list(self.slots):
                await self.retire(slot)
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
