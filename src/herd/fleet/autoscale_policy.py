"""The autoscaler's policy: one pure function from what the fleet looks like now (`Signals`) and
what it decided before (`ScaleState`) to how many routed replicas it wants (`Decision`). No I/O,
no clock: the supervisor's loop, the simulator and the tests all call the same `decide`.

The arithmetic follows the Kubernetes HPA: a raw recommendation each interval, stabilized over
windows (up: the lowest over `scale_up_window_s`; down: the highest over `scale_down_window_s`),
limited per step, plus KEDA-style activation from zero and scale to zero after an idle timeout."""

from __future__ import annotations

import math
from dataclasses import dataclass

from herd.fleet.config import AutoscaleConfig


@dataclass(frozen=True)
class Signals:
    """What the fleet looks like at one instant, as the gateway and the replicas' /metrics see it.
    Counts are requests unless named otherwise; the policy never changes them."""

    ready: int  # routed replicas that are ready
    starting: int  # launched, not ready yet (capacity already being added)
    in_flight: int  # requests being served by replicas (the gateway's count)
    queued: int  # requests waiting in the gateway for a replica (incl. held at zero replicas)
    oldest_wait_s: float = 0.0
    replica_waiting: float = 0.0  # sum of replicas' engine waiting queues (/metrics)
    kv_usage: float = 0.0  # mean reported KV usage of ready replicas, 0..1
    ttft_attainment: float | None = None  # share of recent requests with TTFT <= SLO; None: no data
    idle_s: float = 0.0  # seconds since the last request arrived (inf if none ever)

    def line(self) -> str:
        """The signals in one log-friendly line."""
        att = "-" if self.ttft_attainment is None else f"{self.ttft_attainment:.2f}"
        return (
            f"ready={self.ready} starting={self.starting} in_flight={self.in_flight} "
            f"queued={self.queued} oldest_wait={self.oldest_wait_s:.1f}s "
            f"replica_waiting={self.replica_waiting:g} kv={self.kv_usage:.2f} "
            f"ttft_attainment={att} idle={self.idle_s:.0f}s"
        )


@dataclass(frozen=True)
class ScaleState:
    """What `decide` remembers between calls: the current target, when it last changed, and the
    raw recommendations as change points `(since, recommendation)` (each holds until the next),
    pruned to the longer stabilization window. Immutable: every decision returns a new one."""

    target: int
    last_change: float
    history: tuple[tuple[float, int], ...] = ()


def initial_state(target: int, now: float) -> ScaleState:
    """The state of a fleet that has just been sized to `target`. The start counts as a change
    (cooldown runs from it) and as a recommendation of `target`, so the fleet watches one full
    scale-down window before shrinking below its start size."""
    return ScaleState(target=target, last_change=now, history=((now, target),))


@dataclass(frozen=True)
class Decision:
    """One decision: the routed replicas wanted, why in words (with the numbers), which way it
    moved, and the state to hand to the next `decide`."""

    target: int  # routed replicas wanted (ready + starting); standby replicas are not counted
    reason: str
    direction: str  # "up" | "down" | "none"
    state: ScaleState
    recommendation: int  # this instant's raw recommendation, before windows, steps and cooldown


def load_of(s: Signals) -> float:
    """Requests the fleet carries now. A replica's waiting queue is part of the gateway's
    in-flight count when all traffic comes through this gateway, so adding them would count those
    requests twice; the larger of the two is taken instead, which still sees requests that reached
    the replicas around this gateway (several gateways, direct clients)."""
    return max(float(s.in_flight), s.replica_waiting) + s.queued


def _saturated(s: Signals, c: AutoscaleConfig) -> str:
    if s.ready == 0:
        return ""
    if s.ttft_attainment is not None and s.ttft_attainment < c.slo_attainment_target:
        return f"TTFT attainment {s.ttft_attainment:.2f} < {c.slo_attainment_target:g}"
    if s.kv_usage > c.kv_usage_high:
        return f"KV usage {s.kv_usage:.2f} > {c.kv_usage_high:g}"
    return ""


def _idle(s: Signals, c: AutoscaleConfig) -> bool:
    return (
        c.min_replicas == 0 and s.in_flight == 0 and s.queued == 0 and s.idle_s >= c.idle_timeout_s
    )


def recommend(s: Signals, c: AutoscaleConfig) -> tuple[int, str]:
    """This instant's raw recommendation and its reason: ceil(load / target_load) + warm_pool,
    at least one more than the ready replicas when they are saturated (TTFT attainment under
    target, or KV usage over `kv_usage_high`), clamped to [max(min_replicas, 1), max_replicas];
    0 only when scale to zero is allowed and the fleet has been idle for `idle_timeout_s`."""
    if _idle(s, c):
        return 0, f"idle {s.idle_s:.0f}s >= {c.idle_timeout_s:g}s"
    load = load_of(s)
    demand = math.ceil(load / c.target_load) + c.warm_pool
    why = f"load {load:.1f} / {c.target_load:g} + warm {c.warm_pool} = {demand}"
    saturation = _saturated(s, c)
    if saturation and s.ready + 1 > demand:
        demand = s.ready + 1
        why += f", {saturation}: ready {s.ready} + 1"
    bounded = min(max(demand, c.min_replicas, 1), c.max_replicas)
    if bounded != demand:
        why += f", bounded to [{max(c.min_replicas, 1)}, {c.max_replicas}]"
    return bounded, why


def _record(history: tuple, now: float, rec: int, keep_s: float) -> tuple:
    if not history or history[-1][1] != rec:
        history = (*history, (now, rec))
    # Drop change points superseded before the longest window began; the one in force then stays.
    cut = now - keep_s
    start = 0
    while start + 1 < len(history) and history[start + 1][0] <= cut:
        start += 1
    return history[start:]


def _window(history: tuple, now: float, window_s: float) -> list[int]:
    """Recommendations in force at some time in (now - window_s, now]."""
    cut = now - window_s
    recs = []
    for i, (_, rec) in enumerate(history):
        until = history[i + 1][0] if i + 1 < len(history) else math.inf
        if until > cut:
            recs.append(rec)
    return recs


def decide(signals: Signals, state: ScaleState, config: AutoscaleConfig, now: float) -> Decision:
    """The routed replicas the fleet should have now.

    - Up: to the lowest recommendation over the last `scale_up_window_s` (a brief spike does not
      add replicas), at most `max_scale_up_step` at a time. Never blocked by the cooldown:
      too few replicas cost the SLO at once.
    - Down: to the highest recommendation over the last `scale_down_window_s`, at most
      `max_scale_down_step` at a time.
    - Cooldown: for `cooldown_s` after any change (and after the start) there is no scale-down.
      A replica just added needs time before the signals show its effect (TTFT attainment is
      measured over a window, KV usage over the requests it took), and after a removal the others'
      signals need time to settle; shrinking on stale signals is how fleets flap.
    - From zero: any queued request means at least one replica at once, past the windows (a cold
      start is slow enough already).
    - To zero (`min_replicas == 0`): nothing in flight or queued and `idle_s >= idle_timeout_s`;
      the idle timeout is its own stabilization, so the down window is skipped (step limit and
      cooldown still apply).
    - Bounds: a target outside [min_replicas, max_replicas] (a changed config) is brought inside
      at once. The target counts routed replicas only: standby replicas (`config.standby`) are
      kept by the fleet on top of it.
    """
    c = config
    rec, why = recommend(signals, c)
    keep = max(c.scale_up_window_s, c.scale_down_window_s)
    history = _record(state.history, now, rec, keep)
    current = state.target
    wanted, how = _stabilized(rec, current, history, signals, state, c, now)
    target = min(max(wanted, c.min_replicas), c.max_replicas)
    if target != wanted:
        how = f"bounded to [{c.min_replicas}, {c.max_replicas}]"
    direction = "up" if target > current else "down" if target < current else "none"
    verb = f"{direction} {current} -> {target}" if direction != "none" else f"hold {current}"
    new_state = ScaleState(
        target=target,
        last_change=now if target != current else state.last_change,
        history=history,
    )
    reason = f"{why}: {verb}" + (f" ({how})" if how else "")
    return Decision(target, reason, direction, new_state, rec)


def _stabilized(
    rec: int,
    current: int,
    history: tuple,
    s: Signals,
    state: ScaleState,
    c: AutoscaleConfig,
    now: float,
) -> tuple[int, str]:
    """The target after windows, steps and cooldown, with a note on what held it back."""
    if current == 0 and s.queued > 0:
        return min(max(rec, 1), c.max_scale_up_step), "cold start: windows skipped"
    up = min(_window(history, now, c.scale_up_window_s))
    down = max(_window(history, now, c.scale_down_window_s))
    if up > current:
        target = min(up, current + c.max_scale_up_step)
        return target, "step limit" if target < up else ""
    if rec > current:
        return current, f"scale-up window: lowest {up} over {c.scale_up_window_s:g}s"
    goal = rec if rec == 0 else down
    if goal >= current:
        note = f"scale-down window: highest {down} over {c.scale_down_window_s:g}s"
        return current, note if rec < current else ""
    left = c.cooldown_s - (now - state.last_change)
    if left > 0:
        return current, f"cooldown {left:.0f}s left"
    target = max(goal, current - c.max_scale_down_step)
    return target, "step limit" if target > goal else ""
