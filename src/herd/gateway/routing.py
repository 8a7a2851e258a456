"""Routing policies: pure choices of a replica for a request, kept in a registry.

A policy sees only the candidate replicas (already filtered to ready ones with room), their
observed and reported load, and the request's routing key. It never touches the network."""

from __future__ import annotations

import bisect
import hashlib
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from herd.gateway.replicas import Replica


@dataclass(frozen=True)
class RouteRequest:
    """The facts a routing policy may look at: the model and the session and prefix keys; never the
    whole body. The QoS class and rank order the dispatcher's wait queue, not the choice."""

    model: str  # requested model name
    session_key: str | None = None  # `user` field or x-session-id header
    prefix_key: str | None = None  # leading prompt characters
    version: str | None = None  # fleet version chosen for it (canary split); None: any
    qos_class: str = ""  # its key's QoS class: the gateway queue's share is per class
    rank: int = 0  # its class's rank: the gateway queue serves lower ranks first


class RoutingPolicy(ABC):
    """choose() returns one of `replicas` (never empty) for `request`; it must not block."""

    name: str = ""

    @abstractmethod
    def choose(self, replicas: Sequence[Replica], request: RouteRequest) -> Replica: ...


def load(replica: Replica) -> tuple[int, float]:
    """Observed in-flight first (fresh); the engine-reported queue breaks ties."""
    return (replica.observed.in_flight, replica.reported.num_waiting + replica.reported.num_running)


class RoundRobin(RoutingPolicy):
    """Routes to each candidate replica in turn, ignoring load."""

    name = "round_robin"

    def __init__(self, **_: object):
        self._next = 0

    def choose(self, replicas: Sequence[Replica], request: RouteRequest) -> Replica:
        # Order by URL so the rotation does not depend on registration order.
        ordered = sorted(replicas, key=lambda r: r.url)
        replica = ordered[self._next % len(ordered)]
        self._next += 1
        return replica


class LeastOutstanding(RoutingPolicy):
    """Routes to the candidate with the fewest requests in flight as the gateway observed them,
    ties broken by the queue the replica reports and then in turn."""

    name = "least_outstanding"

    def __init__(self, **_: object):
        self._rr = 0

    def choose(self, replicas: Sequence[Replica], request: RouteRequest) -> Replica:
        best = min(load(r) for r in replicas)
        tied = [r for r in replicas if load(r) == best]
        # Rotate among equals so an idle fleet still spreads requests.
        self._rr += 1
        return tied[self._rr % len(tied)]


class HashRing:
    """Consistent hash ring over replica URLs with `vnodes` points each."""

    def __init__(self, urls: Sequence[str], vnodes: int):
        points = sorted((_hash(f"{url}#{i}"), url) for url in urls for i in range(vnodes))
        self._keys = [p[0] for p in points]
        self._urls = [p[1] for p in points]

    def walk(self, key: str):
        """Replica URLs in ring order starting at `key`'s point, each once."""
        start = bisect.bisect(self._keys, _hash(key))
        seen: set[str] = set()
        for i in range(len(self._keys)):
            url = self._urls[(start + i) % len(self._keys)]
            if url not in seen:
                seen.add(url)
                yield url


class PrefixAffinity(RoutingPolicy):
    """Consistent hashing with bounded load on the session key or the prompt's leading text.

    The home replica of a key keeps it while its in-flight load is within `load_factor` times
    the fleet's mean (plus one); past that the request spills to the least-loaded replica, so a
    hot prefix cannot pile onto one replica. Rings are cached per replica set (bounded LRU)."""

    name = "prefix_affinity"
    max_rings = 8

    def __init__(self, load_factor: float = 1.25, virtual_nodes: int = 64, **_: object):
        self.load_factor = load_factor
        self.virtual_nodes = virtual_nodes
        self._rings: OrderedDict[tuple[str, ...], HashRing] = OrderedDict()
        self._fallback = LeastOutstanding()

    def ring(self, urls: tuple[str, ...]) -> HashRing:
        ring = self._rings.get(urls)
        if ring is None:
            ring = self._rings[urls] = HashRing(urls, self.virtual_nodes)
            if len(self._rings) > self.max_rings:
                self._rings.popitem(last=False)
        self._rings.move_to_end(urls)
        return ring

    def choose(self, replicas: Sequence[Replica], request: RouteRequest) -> Replica:
        key = request.session_key or request.prefix_key
        if not key:
            return self._fallback.choose(replicas, request)
        by_url = {r.url: r for r in replicas}
        total = sum(r.observed.in_flight for r in replicas)
        cap = math.ceil(self.load_factor * (total + 1) / len(replicas))
        home = by_url[next(self.ring(tuple(sorted(by_url))).walk(f"{request.model}|{key}"))]
        if home.observed.in_flight < cap:
            return home
        return self._fallback.choose(replicas, request)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


POLICIES: dict[str, type[RoutingPolicy]] = {
    p.name: p for p in (RoundRobin, LeastOutstanding, PrefixAffinity)
}


def make_policy(name: str, **options: object) -> RoutingPolicy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown routing policy {name!r}; choose one of {sorted(POLICIES)}"
        ) from None
    return cls(**options)
