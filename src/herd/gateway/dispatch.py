"""Admission to replicas: per-replica in-flight caps, a bounded wait queue, the retry budget.

`Dispatcher.acquire` returns a replica with room or raises: 429 when the queue is full or the
wait ran out while replicas were busy, 503 when no replica was ready at all. An autoscaling fleet
tunes it: a longer wait while a replica cold-starts from zero, a tighter queue at the ceiling,
and a traffic split between versions during a canary."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable

from herd.gateway.config import ProxyConfig
from herd.gateway.errors import GatewayError
from herd.gateway.replicas import Replica, ReplicaSet
from herd.gateway.routing import RouteRequest, RoutingPolicy


class RetryBudget:
    """Token bucket: every request deposits `ratio`, every retry spends one.

    It starts full at `burst` so a replica dying under load can have all its in-flight requests
    retried, while a sick fleet cannot multiply its own load by `max_attempts`."""

    def __init__(self, ratio: float, burst: int):
        self.ratio = ratio
        self.burst = float(burst)
        self.tokens = float(burst)

    def deposit(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Dispatcher:
    """Hands each request a replica: filters the ready replicas below their in-flight cap (minus
    those already tried), lets the routing policy choose, and when none is free waits in a
    bounded queue. Promises that a replica's in-flight count is incremented on `acquire` and
    decremented on `release`, exactly once each."""

    def __init__(self, replicas: ReplicaSet, policy: RoutingPolicy, config: ProxyConfig):
        self.replicas = replicas
        self.policy = policy
        self.config = config
        self.retry_budget = RetryBudget(config.retry_budget_ratio, config.retry_budget_min)
        self._waits: dict[int, float] = {}  # queued request -> monotonic time it began waiting
        self._ids = itertools.count()
        # Set by an autoscaling fleet (None / empty: a fixed set of replicas):
        self.cold_wait_s: float | None = None  # at zero ready replicas, wait this long for one
        self.ceiling_queue: int | None = None  # at max replicas: a fuller queue is refused at once
        self.on_wait: Callable[[], None] | None = None  # a request began waiting (wake the scaler)
        self.split: dict[str, float] = {}  # version -> traffic weight (canary)

    @property
    def waiting(self) -> int:
        """Requests queued for a replica right now."""
        return len(self._waits)

    def oldest_wait_s(self) -> float:
        return time.monotonic() - min(self._waits.values()) if self._waits else 0.0

    def pick_version(self) -> str | None:
        """The version a new request goes to: by the split's weights among versions that have a
        ready replica (all of them while none has), None without a split."""
        if not self.split:
            return None
        live = {r.version for r in self.replicas.ready()}
        versions = [v for v in self.split if v in live and self.split[v] > 0] or list(self.split)
        weights = [self.split[v] for v in versions]
        if sum(weights) <= 0:
            return versions[0]
        return random.choices(versions, weights)[0]

    def _candidates(self, exclude: set[str], version: str | None) -> tuple[list[Replica], bool]:
        cap = self.config.max_in_flight_per_replica
        ready = self.replicas.ready()
        if version is not None:
            # A version with no ready replica left (rolled back mid-request) yields to the rest.
            ready = [r for r in ready if r.version == version] or ready
        room = [r for r in ready if r.observed.in_flight < cap]
        # A retry prefers replicas not tried yet, but a tried one beats none.
        fresh = [r for r in room if r.url not in exclude] if exclude else room
        return fresh or room, bool(ready)

    async def acquire(self, request: RouteRequest, exclude: set[str] = frozenset()) -> Replica:
        candidates, any_ready = self._candidates(exclude, request.version)
        if candidates:
            return self._take(candidates, request)
        limit = self.config.queue_size
        if self.ceiling_queue is not None and any_ready:
            limit = min(limit, self.ceiling_queue)
        if self.waiting >= limit:
            raise _refusal(any_ready, "the gateway queue is full")
        loop = asyncio.get_running_loop()
        wait_s = self.config.queue_timeout_s
        if not any_ready and self.cold_wait_s is not None:
            wait_s = max(wait_s, self.cold_wait_s)  # a replica is starting: a slow first token
        deadline = loop.time() + wait_s
        ticket = next(self._ids)
        self._waits[ticket] = time.monotonic()
        if self.on_wait is not None:
            self.on_wait()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _refusal(any_ready, "no replica had room in time")
                await self.replicas.wait_change(remaining)
                candidates, any_ready = self._candidates(exclude, request.version)
                if candidates:
                    return self._take(candidates, request)
        finally:
            del self._waits[ticket]

    def _take(self, candidates: list[Replica], request: RouteRequest) -> Replica:
        replica = self.policy.choose(candidates, request)
        self.replicas.begin(replica)
        return replica

    def release(self, replica: Replica) -> None:
        self.replicas.end(replica)


def _refusal(any_ready: bool, why: str) -> GatewayError:
    if any_ready:
        return GatewayError(
            429, f"overloaded: {why}; retry later", code="overloaded", headers={"Retry-After": "1"}
        )
    return GatewayError(
        503, "no replica is ready; retry later", code="no_replica", headers={"Retry-After": "2"}
    )
