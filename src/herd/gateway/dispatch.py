"""Admission to replicas: per-replica in-flight caps, a bounded wait queue, the retry budget.

`Dispatcher.acquire` returns a replica with room or raises: 429 when the queue is full or the
wait ran out while replicas were busy, 503 when no replica was ready at all."""

from __future__ import annotations

import asyncio

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
        self.waiting = 0  # requests queued for a replica right now
        self.retry_budget = RetryBudget(config.retry_budget_ratio, config.retry_budget_min)

    def _candidates(self, exclude: set[str]) -> tuple[list[Replica], bool]:
        cap = self.config.max_in_flight_per_replica
        ready = self.replicas.ready()
        room = [r for r in ready if r.observed.in_flight < cap]
        # A retry prefers replicas not tried yet, but a tried one beats none.
        fresh = [r for r in room if r.url not in exclude] if exclude else room
        return fresh or room, bool(ready)

    async def acquire(self, request: RouteRequest, exclude: set[str] = frozenset()) -> Replica:
        candidates, any_ready = self._candidates(exclude)
        if candidates:
            return self._take(candidates, request)
        if self.waiting >= self.config.queue_size:
            raise _refusal(any_ready, "the gateway queue is full")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.queue_timeout_s
        self.waiting += 1
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _refusal(any_ready, "no replica had room in time")
                await self.replicas.wait_change(remaining)
                candidates, any_ready = self._candidates(exclude)
                if candidates:
                    return self._take(candidates, request)
        finally:
            self.waiting -= 1

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
