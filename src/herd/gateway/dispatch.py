"""Admission to replicas: per-replica in-flight caps, a bounded wait queue, the retry budget.

`Dispatcher.acquire` returns a replica with room or raises: 429 when the queue is full or the
wait ran out while replicas were busy, 503 when no replica was ready at all. An autoscaling fleet
tunes it: a longer wait while a replica cold-starts from zero, a tighter queue at the ceiling,
and a traffic split between versions during a canary. The queue is ordered by QoS class rank,
then arrival: a freed replica goes to the best waiter that can use it, and each class may hold
at most its share of the queue."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Ticket:
    """One queued request: its place (class rank, then arrival) and what it can use."""

    place: tuple[int, int]  # (rank, arrival sequence): lower is served first
    qos_class: str
    version: str | None
    exclude: frozenset[str]
    since: float  # monotonic time it began waiting


class Dispatcher:
    """Hands each request a replica: filters the ready replicas below their in-flight cap (minus
    those already tried), lets the routing policy choose, and when none is free waits in a
    bounded queue ordered by class rank then arrival. Promises that a replica's in-flight count
    is incremented on `acquire` and decremented on `release`, exactly once each, and that no
    request takes a replica a better-placed waiter could use."""

    def __init__(self, replicas: ReplicaSet, policy: RoutingPolicy, config: ProxyConfig):
        self.replicas = replicas
        self.policy = policy
        self.config = config
        self.retry_budget = RetryBudget(config.retry_budget_ratio, config.retry_budget_min)
        # rank -> {arrival sequence: queued request}; dicts keep arrival order within a rank
        self._queues: dict[int, dict[int, _Ticket]] = {}
        self.shares: dict[str, float] = {}  # QoS class -> most of the queue it may hold
        self._ids = itertools.count()
        # Set by an autoscaling fleet (None / empty: a fixed set of replicas):
        self.cold_wait_s: float | None = None  # at zero ready replicas, wait this long for one
        self.ceiling_queue: int | None = None  # at max replicas: a fuller queue is refused at once
        self.on_wait: Callable[[], None] | None = None  # a request began waiting (wake the scaler)
        self.split: dict[str, float] = {}  # version -> traffic weight (canary)
        self.fallback_after_s: float | None = None  # waited this long: the fallback pool serves

    @property
    def waiting(self) -> int:
        """Requests queued for a replica right now."""
        return sum(len(q) for q in self._queues.values())

    def _tickets(self):
        """Queued requests in service order: rank, then arrival."""
        for rank in sorted(self._queues):
            yield from self._queues[rank].values()

    def _leave(self, rank: int, seq: int) -> None:
        queue = self._queues[rank]
        del queue[seq]
        if not queue:
            del self._queues[rank]

    def oldest_wait_s(self) -> float:
        if not self._queues:
            return 0.0
        return time.monotonic() - min(t.since for t in self._tickets())

    def waiting_by_class(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self._tickets():
            counts[t.qos_class] = counts.get(t.qos_class, 0) + 1
        return counts

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
        seq = next(self._ids)
        place = (request.rank, seq)
        candidates, any_ready = self._candidates(exclude, request.version)
        if candidates and not self._outranked(place):
            return self._take(candidates, request)
        try:
            self._check_room(request.qos_class, any_ready)
        except GatewayError:
            if fallback := self._fallback(exclude):
                return self._take(fallback, request)
            raise
        loop = asyncio.get_running_loop()
        wait_s = self.config.queue_timeout_s
        if not any_ready and self.cold_wait_s is not None:
            wait_s = max(wait_s, self.cold_wait_s)  # a replica is starting: a slow first token
        deadline = loop.time() + wait_s
        fallback_at = loop.time() + (self.fallback_after_s or 0.0)
        ticket = _Ticket(
            place, request.qos_class, request.version, frozenset(exclude), time.monotonic()
        )
        self._queues.setdefault(request.rank, {})[seq] = ticket
        if self.on_wait is not None:
            self.on_wait()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _refusal(any_ready, "no replica had room in time")
                to_fallback = fallback_at - loop.time()
                await self.replicas.wait_change(
                    remaining if to_fallback <= 0 else min(remaining, to_fallback)
                )
                candidates, any_ready = self._candidates(exclude, request.version)
                if candidates and not self._outranked(place):
                    return self._take(candidates, request)
                if loop.time() >= fallback_at and (fallback := self._fallback(exclude)):
                    return self._take(fallback, request)
        finally:
            self._leave(request.rank, seq)
            if self.waiting:
                # Pass the turn on: the next waiter may fit in what is left (or what this one
                # leaves behind), and it may have stood aside for this one.
                self.replicas.notify()

    def _check_room(self, qos_class: str, any_ready: bool) -> None:
        limit = self.config.queue_size
        if self.ceiling_queue is not None and any_ready:
            limit = min(limit, self.ceiling_queue)
        if self.waiting >= limit:
            raise _refusal(any_ready, "the gateway queue is full")
        share = self.shares.get(qos_class, 1.0)
        if share < 1.0:
            mine = self.waiting_by_class().get(qos_class, 0)
            if mine >= max(1, math.floor(share * limit)):
                raise _refusal(any_ready, f"the {qos_class!r} class's share of the queue is full")

    def _outranked(self, place: tuple[int, int]) -> bool:
        """True when a better-placed waiter could take a replica now: it goes first."""
        usable: dict[tuple, bool] = {}
        for t in self._tickets():
            if t.place >= place:
                return False
            k = (t.version, t.exclude)
            if k not in usable:
                usable[k] = bool(self._candidates(set(t.exclude), t.version)[0])
            if usable[k]:
                return True
        return False

    def _fallback(self, exclude: set[str]) -> list[Replica]:
        """Fallback replicas with room, when the fleet has a fallback pool."""
        if self.fallback_after_s is None:
            return []
        cap = self.config.max_in_flight_per_replica
        return [
            r
            for r in self.replicas.fallbacks()
            if r.observed.in_flight < cap and r.url not in exclude
        ]

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
