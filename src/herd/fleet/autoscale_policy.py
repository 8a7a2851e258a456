"""The autoscaler's policy: one pure function from what the fleet looks like now (`Signals`) and
what it decided before (`ScaleState`) to how many routed replicas it wants (`Decision`). No I/O,
no clock: the supervisor's loop, the simulator and the tests all call the same `decide`.

The arithmetic follows the Kubernetes HPA: a raw recommendation each interval, stabilized over
windows (up: the lowest over `scale_up_window_s`; down: the highest over `scale_down_window_s`),
limited per step, plus KEDA-style activation from zero and scale to zero after an idle timeout."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    """What `decide` remembers between calls: the current target, when it last changed, the
    raw recommendations as change points `(since, up, down)` (each holds until the next), pruned
    to the longer stabilization window, and since when the ready count has been what it is (a
    saturation signal counts only once it was measured on the current replicas), and the last
    scale-down with the floor a reverted one set. Immutable: every decision returns a new one."""

    target: int
    last_change: float
    history: tuple[tuple[float, int, int], ...] = ()
    ready: int = -1  # the ready count last seen (-1: none yet)
    ready_since: float = -math.inf
    last_down_from: int = 0  # the size the last scale-down left
    last_down_at: float = -math.inf
    floor: int = 0  # after a reverted scale-down: no scale-down below this ...
    floor_until: float = -math.inf  # ... until then


def initial_state(target: int, now: float) -> ScaleState:
    """The state of a fleet that has just been sized to `target`. The start counts as a change
    (cooldown runs from it) and as a recommendation of `target`, so the fleet watches one full
    scale-down window before shrinking below its start size."""
    return ScaleState(target=target, last_change=now, history=((now, target, target),))


@dataclass(frozen=True)
class Decision:
    """One decision: the routed replicas wanted, why in words (with the numbers), which way it
    moved, and the state to hand to the next `decide`."""

    target: int  # routed replicas wanted (ready + starting); standby replicas are not counted
    reason: str
    direction: str  # "up" | "down" | "none"
    state: ScaleState
    recommendation: int  # this instant's raw up-recommendation, before windows, steps, cooldown


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


def recommend(s: Signals, c: AutoscaleConfig, settled: bool = True) -> tuple[int, int, str]:
    """This instant's raw recommendations `(up, down, reason)`. `up` = ceil(load / target_load) +
    warm_pool, at least one more than the ready replicas when they are saturated (TTFT attainment
    under target, or KV usage over `kv_usage_high`); `down` is the same at (1 - tolerance) of
    target_load, the size scale-down may go to: a hysteresis band, so a load near a boundary does
    not add and remove the same replica in turn. Saturation counts only when `settled`: no
    replica starting and the ready ones unchanged for `slo_window_s`, so TTFT attainment measured
    before the last replica arrived does not add another. Both are clamped to
    [max(min_replicas, 1), max_replicas]; both are 0 only when scale to zero is allowed and the
    fleet has been idle for `idle_timeout_s`."""
    if _idle(s, c):
        return 0, 0, f"idle {s.idle_s:.0f}s >= {c.idle_timeout_s:g}s"
    load = load_of(s)
    up = math.ceil(load / c.target_load) + c.warm_pool
    down = math.ceil(load / (c.target_load * (1 - c.tolerance))) + c.warm_pool
    why = f"load {load:.1f} / {c.target_load:g} + warm {c.warm_pool} = {up}"
    if down != up:
        why += f" ({down} at {1 - c.tolerance:.0%} of target)"
    saturation = _saturated(s, c) if settled else ""
    if saturation and s.ready + 1 > up:
        up = down = max(down, s.ready + 1)
        why += f", {saturation}: ready {s.ready} + 1"
    lo, hi = max(c.min_replicas, 1), c.max_replicas
    if not lo <= up <= hi or not lo <= down <= hi:
        why += f", bounded to [{lo}, {hi}]"
    return min(max(up, lo), hi), min(max(down, lo), hi), why


def _record(history: tuple, now: float, up: int, down: int, keep_s: float) -> tuple:
    if not history or history[-1][1:] != (up, down):
        history = (*history, (now, up, down))
    # Drop change points superseded before the longest window began; the one in force then stays.
    cut = now - keep_s
    start = 0
    while start + 1 < len(history) and history[start + 1][0] <= cut:
        start += 1
    return history[start:]


def _window(history: tuple, now: float, window_s: float) -> list[tuple[float, int, int]]:
    """Change points in force at some time in (now - window_s, now]."""
    cut = now - window_s
    return [
        entry
        for i, entry in enumerate(history)
        if (history[i + 1][0] if i + 1 < len(history) else math.inf) > cut
    ]


def decide(signals: Signals, state: ScaleState, config: AutoscaleConfig, now: float) -> Decision:
    """The routed replicas the fleet should have now.

    - Up: to the lowest recommendation over the last `scale_up_window_s` (a brief spike does not
      add replicas), at most `max_scale_up_step` at a time. Never blocked by the cooldown:
      too few replicas cost the SLO at once.
    - Down: to the highest down-recommendation (load at (1 - tolerance) of target) over the last
      `scale_down_window_s`, at most `max_scale_down_step` at a time.
    - Cooldown: for `cooldown_s` after any change (and after the start) there is no scale-down.
      A replica just added needs time before the signals show its effect (TTFT attainment is
      measured over a window, KV usage over the requests it took), and after a removal the others'
      signals need time to settle; shrinking on stale signals is how fleets flap.
    - From zero: any queued request means at least one replica at once, past the windows (a cold
      start is slow enough already).
    - To zero (`min_replicas == 0`): nothing in flight or queued and `idle_s >= idle_timeout_s`;
      the idle timeout is its own stabilization, so the down window is skipped (step limit and
      cooldown still apply).
    - Flap damping: a scale-down reverted by a scale-up within `scale_down_window_s` shows that
      the smaller size does not carry this load (requests in flight grow as replicas are removed,
      which the load arithmetic cannot foresee), so for `flap_hold_s` the fleet does not go
      below the size it left. Idle scale to zero is not held.
    - Bounds: a target outside [min_replicas, max_replicas] (a changed config) is brought inside
      at once. The target counts routed replicas only: standby replicas (`config.standby`) are
      kept by the fleet on top of it.
    """
    c = config
    ready_since = state.ready_since if signals.ready == state.ready else now
    settled = signals.starting == 0 and now - ready_since >= c.slo_window_s
    up, down, why = recommend(signals, c, settled)
    keep = max(c.scale_up_window_s, c.scale_down_window_s)
    history = _record(state.history, now, up, down, keep)
    current = state.target
    wanted, how = _stabilized((up, down), current, history, signals, state, c, now)
    target = min(max(wanted, c.min_replicas), c.max_replicas)
    if target != wanted:
        how = f"bounded to [{c.min_replicas}, {c.max_replicas}]"
    direction = "up" if target > current else "down" if target < current else "none"
    verb = f"{direction} {current} -> {target}" if direction != "none" else f"hold {current}"
    new_state = replace(
        state,
        target=target,
        last_change=now if target != current else state.last_change,
        history=history,
        ready=signals.ready,
        ready_since=ready_since,
    )
    if direction == "down":
        new_state = replace(new_state, last_down_from=current, last_down_at=now)
    elif direction == "up" and now - state.last_down_at < c.scale_down_window_s:
        floor = min(state.last_down_from, target)
        new_state = replace(new_state, floor=floor, floor_until=now + c.flap_hold_s)
        how = (
            how + ", " if how else ""
        ) + f"reverts a scale-down: floor {floor} for {c.flap_hold_s:g}s"
    reason = f"{why}: {verb}" + (f" ({how})" if how else "")
    return Decision(target, reason, direction, new_state, up)


def _stabilized(
    now_recs: tuple[int, int],
    current: int,
    history: tuple,
    s: Signals,
    state: ScaleState,
    c: AutoscaleConfig,
    now: float,
) -> tuple[int, str]:
    """The target after windows, steps and cooldown, with a note on what held it back."""
    up_now, down_now = now_recs
    if current == 0 and s.queued > 0:
        return min(max(up_now, 1), c.max_scale_up_step), "cold start: windows skipped"
    up = min(e[1] for e in _window(history, now, c.scale_up_window_s))
    down = max(e[2] for e in _window(history, now, c.scale_down_window_s))
    if up > current:
        target = min(up, current + c.max_scale_up_step)
        return target, "step limit" if target < up else ""
    if up_now > current:
        return current, f"scale-up window: lowest {up} over {c.scale_up_window_s:g}s"
    goal = 0 if down_now == 0 else down
    if goal >= current:
        note = f"scale-down window: highest {down} over {c.scale_down_window_s:g}s"
        return current, note if down_now < current else ""
    if goal and now < state.floor_until and goal < state.floor:
        goal = state.floor
        if goal >= current:
            return current, f"flap floor {goal} for {state.floor_until - now:.0f}s more"
    left = c.cooldown_s - (now - state.last_change)
    if left > 0:
        return current, f"cooldown {left:.0f}s left"
    target = max(goal, current - c.max_scale_down_step)
    return target, "step limit" if target > goal else ""
