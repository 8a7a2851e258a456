"""Replay an arrival trace through the autoscaler's own `decide` against replicas modelled from a
bench run, in discrete ticks: how many replica-seconds it costs and how many requests get their
first token within the SLO, autoscaled or as a static fleet.

The model, per tick of `dt` seconds: replicas whose cold start is over become ready; the tick's
arrivals (the trace rate's integral, fractional) join one FIFO gateway queue; queued requests are
admitted while the ready replicas have room (`max_concurrency` each, the highest measured level);
an admitted request's TTFT is its wait in the queue plus the modelled TTFT at the per-replica
load; the replicas then complete `throughput(load) x dt` requests each. A tick is served in
sub-steps no longer than the shortest measured request (n / throughput(n)), so slots freed within
a tick are reused within it. Every `interval_s` the policy decides, and the fleet starts replicas
(ready after `cold_start_s`) or removes them (starting ones first; a removed replica's in-flight
requests finish on the others). KV usage is not modelled (it reads 0); TTFT attainment is fed
back over the last `slo_window_s`."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from herd.fleet.autoscale_policy import Signals, decide, initial_state
from herd.fleet.config import AutoscaleConfig
from herd.fleet.replica_model import ReplicaModel
from herd.fleet.traces import Trace

EPS = 1e-9
MAX_SUBSTEPS = 50  # per tick; bounds the cost of replicas answering in a few milliseconds


@dataclass
class SimResult:
    """One run's totals and its per-tick series (for the plot). Counts are fractional requests."""

    name: str
    arrived: float = 0.0
    met: float = 0.0  # first token within the TTFT SLO
    admitted: float = 0.0
    unserved: float = 0.0  # still queued when the trace ended (counted as missed)
    replica_seconds: float = 0.0  # (ready + starting) replicas x seconds
    peak_replicas: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    series: dict[str, list[float]] = field(default_factory=dict)

    @property
    def slo_attainment(self) -> float:
        return self.met / self.arrived if self.arrived > EPS else 1.0

    def cost(self, per_replica_hour: float) -> float:
        return self.replica_seconds / 3600 * per_replica_hour


@dataclass
class _Fleet:
    ready: int
    starting: list[float]  # ready_at times
    queue: deque = field(default_factory=deque)  # [arrival_t, count], oldest first
    queued: float = 0.0
    in_flight: float = 0.0
    busy: float = 0.0  # mean in flight over the tick's sub-steps (after admission)
    recent: deque = field(default_factory=deque)  # (t, met, admitted) per tick, for attainment
    last_arrival: float = -math.inf


SERIES = ("t", "arrival_rps", "ready", "starting", "target", "queued", "in_flight")


def simulate(
    trace: Trace,
    model: ReplicaModel,
    config: AutoscaleConfig,
    cold_start_s: float,
    name: str = "autoscaled",
    start_replicas: int | None = None,
    dt: float = 1.0,
    progress: Callable[[float, float], None] | None = None,
) -> SimResult:
    """Run the trace once; `start_replicas` defaults to `config.min_replicas` (ready at t=0).
    `progress(simulated_s, total_s)` is called about every simulated hour."""
    start = config.min_replicas if start_replicas is None else start_replicas
    fleet, res = _Fleet(ready=start, starting=[]), SimResult(name)
    res.series = {k: [] for k in SERIES}
    state = initial_state(start, 0.0)
    every = max(1, round(config.interval_s / dt))
    # A request shorter than a tick frees its slot within the tick: serve in sub-steps no
    # longer than the shortest measured request, or a fast replica would look slow.
    sub = max(1, min(MAX_SUBSTEPS, math.ceil(dt / model.min_service_s - EPS)))
    for k, arrivals in enumerate(trace.arrivals_per_tick(dt)):
        t = k * dt
        fleet.ready += sum(1 for r in fleet.starting if r <= t + EPS)
        fleet.starting = [r for r in fleet.starting if r > t + EPS]
        _serve_tick(fleet, res, model, config.ttft_slo_s, t, dt, sub, arrivals)
        _forget(fleet.recent, t - config.slo_window_s)
        if k % every == 0:
            decision = decide(_signals(fleet, t), state, config, t)
            state = decision.state
            if decision.direction != "none":
                res.decisions[decision.direction] += 1
            _reconcile(fleet, decision.target, t + cold_start_s)
        res.replica_seconds += (fleet.ready + len(fleet.starting)) * dt
        res.peak_replicas = max(res.peak_replicas, fleet.ready + len(fleet.starting))
        row = (t, arrivals / dt, fleet.ready, len(fleet.starting), state.target, fleet.queued,
               fleet.busy)  # fmt: skip
        for key, value in zip(SERIES, row, strict=True):
            res.series[key].append(value)
        if progress and k and k % max(1, round(3600 / dt)) == 0:
            progress(t, trace.duration_s)
    res.unserved = fleet.queued
    return res


def _serve_tick(
    fleet: _Fleet,
    res: SimResult,
    model: ReplicaModel,
    slo_s: float,
    t: float,
    dt: float,
    sub: int,
    arrivals: float,
) -> None:
    """One tick in `sub` equal sub-steps: arrivals spread evenly, admission, completions. The
    in-flight count the policy sees is the sub-steps' mean after admission (the concurrency the
    replicas ran at, as Little's law counts it)."""
    h, met, admitted, busy = dt / sub, 0.0, 0.0, 0.0
    for j in range(sub):
        now = t + j * h
        _arrive(fleet, res, now, arrivals / sub)
        m, a = _admit(fleet, model, slo_s, now)
        met, admitted, busy = met + m, admitted + a, busy + fleet.in_flight
        if fleet.ready:
            rate = fleet.ready * model.throughput(fleet.in_flight / fleet.ready)
            fleet.in_flight = max(0.0, fleet.in_flight - rate * h)
    fleet.busy = busy / sub
    res.met, res.admitted = res.met + met, res.admitted + admitted
    fleet.recent.append((t, met, admitted))


def _forget(recent: deque, before: float) -> None:
    while recent and recent[0][0] <= before:
        recent.popleft()


def _arrive(fleet: _Fleet, res: SimResult, t: float, arrivals: float) -> None:
    if arrivals <= EPS:
        return
    fleet.queue.append([t, arrivals])
    fleet.queued += arrivals
    fleet.last_arrival = t
    res.arrived += arrivals


def _admit(fleet: _Fleet, model: ReplicaModel, slo_s: float, t: float) -> tuple[float, float]:
    """Admit the oldest queued requests while the ready replicas have room; (met, admitted),
    judging each one's TTFT as its queue wait + the modelled TTFT at the load after admission."""
    room = fleet.ready * model.max_concurrency - fleet.in_flight
    taken = []  # (arrival_t, count)
    while fleet.queue and room > EPS:
        head = fleet.queue[0]
        n = min(head[1], room)
        taken.append((head[0], n))
        room -= n
        head[1] -= n
        if head[1] <= EPS:
            fleet.queue.popleft()
    total = sum(n for _, n in taken)
    if total <= EPS:
        return 0.0, 0.0
    fleet.queued = max(0.0, fleet.queued - total)
    fleet.in_flight += total
    ttft = model.ttft(fleet.in_flight / fleet.ready)
    return sum(n for arrived, n in taken if (t - arrived) + ttft <= slo_s + EPS), total


def _signals(fleet: _Fleet, t: float) -> Signals:
    admitted = sum(n for _, _, n in fleet.recent)
    attainment = sum(m for _, m, _ in fleet.recent) / admitted if admitted > EPS else None
    return Signals(
        ready=fleet.ready,
        starting=len(fleet.starting),
        in_flight=math.ceil(fleet.busy - 1e-6),
        queued=math.ceil(fleet.queued - 1e-6),
        oldest_wait_s=max(0.0, t - fleet.queue[0][0]) if fleet.queue else 0.0,
        ttft_attainment=attainment,
        idle_s=max(0.0, t - fleet.last_arrival),
    )


def _reconcile(fleet: _Fleet, target: int, ready_at: float) -> None:
    have = fleet.ready + len(fleet.starting)
    if target > have:
        fleet.starting += [ready_at] * (target - have)
    for _ in range(have - target):
        if fleet.starting:
            fleet.starting.pop()  # the most recently started: furthest from ready
        else:
            fleet.ready -= 1


def static_size(trace: Trace, model: ReplicaModel, ttft_slo_s: float) -> int:
    """Replicas a fixed fleet needs for the trace's peak rate at the SLO-meeting capacity."""
    return max(1, math.ceil(trace.peak_rps / model.capacity_rps(ttft_slo_s) - 1e-9))


def compare(
    trace: Trace,
    model: ReplicaModel,
    config: AutoscaleConfig,
    cold_start_s: float,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[SimResult, SimResult]:
    """The autoscaled fleet and a static one sized for the peak, on the same trace."""
    auto = simulate(trace, model, config, cold_start_s, progress=progress)
    n = static_size(trace, model, config.ttft_slo_s)
    fixed = replace(config, min_replicas=n, max_replicas=n, warm_pool=0)
    static = simulate(trace, model, fixed, cold_start_s, name=f"static {n}", start_replicas=n)
    return auto, static
