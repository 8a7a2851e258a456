"""The replicas behind the gateway and what is known about each.

Two kinds of knowledge are kept apart: `Observed` is what the gateway saw itself (in-flight,
latency, errors); `Reported` is what the replica says about itself in /metrics (queue, KV use,
prefix-cache hits). Routing policies read both; only the gateway writes `Observed`."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field


class ReplicaState(enum.StrEnum):
    """Where a replica is in its life as the gateway sees it; only READY replicas get new traffic."""

    LOADING = "loading"  # started, not ready yet: no traffic
    READY = "ready"  # takes traffic
    DRAINING = "draining"  # finishing its requests before it stops: no new traffic
    STANDBY = "standby"  # loaded and ready but unrouted: the fleet promotes it at once when needed
    EJECTED = "ejected"  # failed too often: no traffic until a probe succeeds after backoff
    DOWN = "down"  # its process is gone (local replicas)


@dataclass
class Observed:
    """What the gateway itself has seen of a replica (in flight, failures, latency, ejections), as
    opposed to what the replica reports: routing and ejection rely on this even when /metrics is
    missing."""

    in_flight: int = 0  # requests the gateway has sent and not finished
    requests: int = 0  # requests sent in total
    last_request_at: float = 0.0  # monotonic time the last request was routed here
    failures: int = 0  # failed attempts in total
    consecutive_failures: int = 0  # reset by any success; ejects at HealthConfig.eject_after
    ewma_latency_s: float = 0.0  # smoothed time to first byte
    ejections: int = 0  # times ejected in a row; sets the backoff, reset on re-admission
    ejected_until: float = 0.0  # monotonic time of the next probe while ejected
    ever_ready: bool = False  # a 503 from /ready means draining if it was ready once, else loading


@dataclass
class Reported:
    """What a replica reports about itself in /metrics (running, waiting, KV use, prefix-cache
    counters), with when it was last scraped; absent for replicas without metrics."""

    num_running: float = 0.0  # engine's running requests
    num_waiting: float = 0.0  # engine's queued requests
    kv_usage: float = 0.0  # KV cache use in [0, 1]
    prefix_queries: float = 0.0  # prefix-cache lookups (counter; tokens or blocks)
    prefix_hits: float = 0.0  # prefix-cache hits (counter)
    generation_tokens: float = 0.0  # tokens generated (counter): tokens/s from two scrapes
    has_metrics: bool | None = None  # None: not scraped yet; False: no /metrics, stop asking
    scraped_at: float = 0.0  # monotonic time of the last scrape


@dataclass
class Replica:
    """One upstream as the gateway knows it: URL, state, what the gateway observed and what the
    replica reported. `locked` marks states set by the fleet (draining, down) that health checks
    must not undo."""

    url: str  # base URL, no trailing slash
    state: ReplicaState = ReplicaState.LOADING
    pid: int | None = None  # local replicas only
    version: str = ""  # the fleet's name for what it runs (model + arguments); "" when unmanaged
    fallback_model: str | None = None  # in the fallback pool: the model id it answers as
    locked: bool = False  # state set by the fleet (draining, down): health checks leave it
    observed: Observed = field(default_factory=Observed)
    reported: Reported = field(default_factory=Reported)

    def to_json(self) -> dict:
        return {
            "url": self.url,
            "state": self.state.value,
            "in_flight": self.observed.in_flight,
            "pid": self.pid,
            "version": self.version,
            "fallback_model": self.fallback_model,
            "requests": self.observed.requests,
            "failures": self.observed.failures,
            "num_waiting": self.reported.num_waiting,
            "num_running": self.reported.num_running,
            "kv_usage": self.reported.kv_usage,
            "prefix_hits": self.reported.prefix_hits,
            "generation_tokens": self.reported.generation_tokens,
        }


class ReplicaSet:
    """The registry of replicas; notifies waiters whenever capacity may have appeared."""

    def __init__(
        self, eject_after: int = 3, backoff_base_s: float = 1.0, backoff_max_s: float = 30.0
    ):
        self.eject_after = eject_after
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._replicas: dict[str, Replica] = {}
        self._changed = asyncio.Event()
        self.on_eject = None  # callback(url) for metrics

    def add(
        self,
        url: str,
        state: ReplicaState = ReplicaState.LOADING,
        pid: int | None = None,
        version: str = "",
    ) -> Replica:
        url = url.rstrip("/")
        replica = self._replicas.get(url)
        if replica is None:
            replica = self._replicas[url] = Replica(url=url, state=state, pid=pid, version=version)
        else:
            replica.state, replica.pid, replica.version = state, pid, version
        self._notify()
        return replica

    def remove(self, url: str) -> None:
        self._replicas.pop(url.rstrip("/"), None)
        self._notify()

    def get(self, url: str) -> Replica | None:
        return self._replicas.get(url.rstrip("/"))

    def all(self) -> list[Replica]:
        return list(self._replicas.values())

    def ready(self, version: str | None = None) -> list[Replica]:
        """Replicas taking traffic (of `version` only, when given); never the fallback pool."""
        return [
            r
            for r in self._replicas.values()
            if r.state is ReplicaState.READY
            and r.fallback_model is None
            and (version is None or r.version == version)
        ]

    def fallbacks(self) -> list[Replica]:
        """Ready replicas of the fallback pool (a smaller model for when the main pool is full)."""
        return [
            r
            for r in self._replicas.values()
            if r.state is ReplicaState.READY and r.fallback_model is not None
        ]

    def count(self, *states: ReplicaState) -> int:
        return sum(1 for r in self._replicas.values() if r.state in states)

    def set_state(self, url: str, state: ReplicaState) -> None:
        replica = self.get(url)
        if replica is None or replica.state is state:
            return
        replica.state = state
        if state is ReplicaState.READY:
            replica.observed.ever_ready = True
            replica.observed.consecutive_failures = 0
            replica.observed.ejections = 0
        self._notify()

    # --- passive health: the proxy reports every attempt's outcome ---

    def begin(self, replica: Replica) -> None:
        replica.observed.in_flight += 1
        replica.observed.requests += 1
        replica.observed.last_request_at = time.monotonic()

    def end(self, replica: Replica) -> None:
        replica.observed.in_flight -= 1
        self._notify()

    def record_success(self, replica: Replica, ttfb_s: float) -> None:
        obs = replica.observed
        obs.consecutive_failures = 0
        obs.ewma_latency_s = (
            ttfb_s if obs.ewma_latency_s == 0 else 0.8 * obs.ewma_latency_s + 0.2 * ttfb_s
        )

    def record_failure(self, replica: Replica, definitive: bool = False) -> None:
        """A failed attempt; `definitive` (nothing listens) ejects at once."""
        obs = replica.observed
        obs.failures += 1
        obs.consecutive_failures += 1
        if replica.state is ReplicaState.READY and (
            definitive or obs.consecutive_failures >= self.eject_after
        ):
            self.eject(replica)

    def eject(self, replica: Replica) -> None:
        obs = replica.observed
        delay = min(self.backoff_base_s * (2**obs.ejections), self.backoff_max_s)
        obs.ejections += 1
        obs.ejected_until = time.monotonic() + delay
        replica.state = ReplicaState.EJECTED
        if self.on_eject:
            self.on_eject(replica.url)
        self._notify()

    # --- waiting for capacity ---

    def notify(self) -> None:
        """Wake every waiter to look again (the dispatcher passes a freed turn on)."""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        """Wait until a replica's state or load changes, or `timeout` passes."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
