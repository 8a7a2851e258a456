"""The local fleet's autoscaler: each interval (or at once when a request starts waiting) it reads
the gateway's signals, asks the pure policy (`herd.fleet.autoscale_policy.decide`) for a target,
and grows or shrinks the stable version's replicas; it also keeps the standby pool filled and
tells the gateway how long to hold requests at zero and when the queue is at the ceiling."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time

from prometheus_client import Counter, Gauge, Histogram

from herd.fleet.autoscale_policy import Decision, Signals, decide, initial_state
from herd.fleet.config import AutoscaleConfig
from herd.fleet.rollout import Rollouts
from herd.fleet.supervisor import Slot, Supervisor
from herd.gateway.app import Gateway

log = logging.getLogger("herd.autoscaler")


class AutoscalerMetrics:
    """The autoscaler's series on the gateway's /metrics: desired and actual replicas, decisions
    by direction, and cold-start seconds."""

    def __init__(self, registry):
        r = registry
        self.desired = Gauge("herd_autoscaler_desired_replicas", "Replicas wanted", registry=r)
        self.actual = Gauge("herd_autoscaler_actual_replicas", "Replicas ready", registry=r)
        self.decisions = Counter(
            "herd_autoscaler_decisions", "Scaling decisions by direction", ["direction"],
            registry=r,
        )  # fmt: skip
        self.cold_start = Histogram(
            "herd_replica_cold_start_seconds",
            "Launch to ready of a replica (process, weights, warm-up)",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )


class Autoscaler:
    """Sizes the stable version's replicas to the policy's target. Promises: never more routed
    replicas than `max_replicas`; a replica removed is drained (nothing in flight is lost);
    no change while a rollout replaces replicas; every decision is one log line with its reason
    and signals."""

    def __init__(
        self,
        config: AutoscaleConfig,
        supervisor: Supervisor,
        gateway: Gateway,
        rollouts: Rollouts | None = None,
    ):
        self.config = config
        self.sup = supervisor
        self.gateway = gateway
        self.rollouts = rollouts
        self.metrics = AutoscalerMetrics(gateway.metrics.registry)
        self.state = initial_state(len(supervisor.serving(supervisor.version)), time.monotonic())
        self.last: Decision | None = None
        self.last_at: float | None = None  # wall-clock time of the last decision that changed
        self._wake = asyncio.Event()
        gateway.load.window_s = config.slo_window_s  # attainment over the policy's window
        d = gateway.dispatcher
        d.cold_wait_s = config.cold_start_wait_s
        d.on_wait = self._wake.set
        supervisor.on_ready = self._cold_start

    def _cold_start(self, slot: Slot, seconds: float) -> None:
        self.metrics.cold_start.observe(seconds)

    # --- the loop ---

    async def run(self) -> None:
        """Decide every interval (sooner when a request starts waiting) until cancelled; starts
        from the fleet's size at the moment it runs."""
        self.state = initial_state(len(self.sup.serving(self.sup.version)), time.monotonic())
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # the loop must outlive one bad tick
                log.exception("autoscaler tick failed")

    def tick(self, now: float | None = None) -> Decision | None:
        """One decision, applied. Returns it (None while a rollout holds the fleet)."""
        if self.sup.stopping or (self.rollouts is not None and self.rollouts.busy):
            return None
        now = time.monotonic() if now is None else now
        signals = self.signals(now)
        decision = decide(signals, self.state, self.config, now)
        self.state = decision.state
        self.metrics.desired.set(decision.target)
        self.metrics.actual.set(signals.ready)
        if self.last is None or decision.direction != "none":
            self.last, self.last_at = decision, time.time()
        if decision.direction != "none":
            self.metrics.decisions.labels(decision.direction).inc()
            log.info("autoscale %s: %s [%s]", decision.direction, decision.reason, signals.line())
        self.apply(decision.target)
        return decision

    def signals(self, now: float) -> Signals:
        replicas = self.gateway.replicas
        ready = replicas.ready()
        routed = self.sup.serving(self.sup.version)
        starting = sum(1 for s in routed if not s.ready)
        load = self.gateway.load
        d = self.gateway.dispatcher
        return Signals(
            ready=len(ready),
            starting=starting,
            in_flight=sum(r.observed.in_flight for r in replicas.all() if not r.fallback_model),
            queued=d.waiting,
            oldest_wait_s=d.oldest_wait_s(),
            replica_waiting=sum(r.reported.num_waiting for r in ready),
            kv_usage=(sum(r.reported.kv_usage for r in ready) / len(ready)) if ready else 0.0,
            ttft_attainment=load.attainment(self.config.ttft_slo_s, now),
            idle_s=load.idle_s(now),
        )

    # --- acting ---

    def apply(self, target: int) -> None:
        """Grow (standby first) or shrink (cheapest first, drained) to `target` routed replicas
        of the stable version; refill the standby pool; set the gateway's queue ceiling."""
        version = self.sup.version
        routed = self.sup.serving(version)
        for _ in range(target - len(routed)):
            standby = [s for s in self.sup.standbys() if s.version == version]
            if standby:
                self.sup.promote(max(standby, key=lambda s: s.ready))
            else:
                self.sup.spawn(self.sup.start_slot(self.sup.reserve(version)))
        for _ in range(len(routed) - target):
            victim = self.sup.victim(self.sup.serving(version))
            self.sup.retire_soon(victim)
        for _ in range(self.config.standby - len(self.sup.standbys())):
            self.sup.spawn(self.sup.start_slot(self.sup.reserve(version, standby=True)))
        at_ceiling = target >= self.config.max_replicas
        d = self.gateway.dispatcher
        d.ceiling_queue = math.ceil(target * self.config.target_load) if at_ceiling else None

    def view(self) -> dict:
        """GET /admin/autoscaler."""
        last = None
        if self.last is not None:
            last = {"target": self.last.target, "reason": self.last.reason, "at": self.last_at}
        return {
            "desired": self.state_target(),
            "actual": len(self.gateway.replicas.ready(self.sup.version.name)),
            "standby": len(self.sup.standbys()),
            "last_decision": last,
            "config": dataclasses.asdict(self.config),
        }

    def state_target(self) -> int:
        return self.last.target if self.last is not None else len(self.sup.serving())
