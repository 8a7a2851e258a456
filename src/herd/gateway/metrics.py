"""The gateway's own Prometheus metrics, in a registry per gateway (no global state).

Label values are bounded: replicas come from the fleet or config, keys from the keys file."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from herd.gateway.replicas import ReplicaSet, ReplicaState

# Added latency is small: resolve from 50 µs to 100 ms.
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)


class GatewayMetrics:
    """The gateway's own Prometheus metrics (requests, retries, ejections, rate limiting,
    cache, added latency) in a per-gateway registry, plus per-replica gauges rendered at scrape time from
    the replica set."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "herd_gateway_requests",
            "Requests answered, by replica, HTTP status and key",
            ["replica", "status", "key"],
            registry=r,
        )
        self.retries = Counter(
            "herd_gateway_retries", "Attempts retried on another replica", registry=r
        )
        self.ejections = Counter(
            "herd_gateway_ejections", "Replicas ejected after failures", ["replica"], registry=r
        )
        self.rate_limited = Counter(
            "herd_gateway_rate_limited", "Requests refused by a limit", ["key", "limit"], registry=r
        )
        self.cache = Counter(
            "herd_gateway_cache_lookups", "Response-cache lookups by result", ["result"], registry=r
        )
        self.added_latency = Histogram(
            "herd_gateway_added_latency_seconds",
            "Time a request spent in the gateway itself (not waiting on a replica)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "herd_gateway_requests_in_flight", "Requests being answered", registry=r
        )
        self.queued = Gauge(
            "herd_gateway_requests_queued", "Requests waiting for a replica", registry=r
        )
        # The replica's name and labels, so one query counts refusals across gateway and fleet.
        self.rejected = Counter(
            "herd_rejected_requests",
            "Requests the gateway refused itself, by HTTP status and reason (the error's code or "
            "type)",
            ["status", "reason"],
            registry=r,
        )
        self.replicas = Gauge("herd_gateway_replicas", "Replicas by state", ["state"], registry=r)
        # The queue-to-compute signal autoscalers (herd's, an HPA, KEDA) scale on.
        self.load_per_replica = Gauge(
            "herd_gateway_load_per_replica",
            "Requests at replicas plus queued in the gateway, per ready replica (all of it when "
            "none is ready)",
            registry=r,
        )

    def render(self, replicas: ReplicaSet, queued: int) -> bytes:
        counts = {s: 0 for s in ReplicaState}
        for replica in replicas.all():
            counts[replica.state] += 1
        for state, n in counts.items():
            self.replicas.labels(state.value).set(n)
        self.queued.set(queued)
        at_replicas = sum(r.observed.in_flight for r in replicas.all())
        self.load_per_replica.set((at_replicas + queued) / max(counts[ReplicaState.READY], 1))
        return generate_latest(self.registry)
