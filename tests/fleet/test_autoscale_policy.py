"""The autoscaler's pure policy, rule by rule: demand, saturation, bounds, windows, steps,
cooldown, cold start, scale to zero, and no flapping on a noisy signal."""

import math
import random
from dataclasses import replace

import pytest

from herd.fleet.autoscale_policy import Signals, decide, initial_state, recommend
from herd.fleet.config import AutoscaleConfig


def cfg(**kw) -> AutoscaleConfig:
    return AutoscaleConfig(enabled=True, **kw)


def sig(**kw) -> Signals:
    return Signals(**{"ready": 1, "starting": 0, "in_flight": 0, "queued": 0, **kw})


@pytest.mark.parametrize(
    "config, signals, expected",
    [
        ({}, {}, 1),  # no load: min_replicas
        ({}, {"in_flight": 23}, 3),  # ceil(23 / 8)
        ({}, {"in_flight": 10, "queued": 6}, 2),  # queued requests count as load
        ({}, {"in_flight": 17, "queued": 0}, 3),
        ({"warm_pool": 1}, {"in_flight": 8}, 2),  # warm pool on top of demand
        ({"warm_pool": 2}, {}, 2),
        ({}, {"in_flight": 5, "replica_waiting": 20}, 3),  # traffic around the gateway seen
        ({}, {"in_flight": 12, "replica_waiting": 6}, 2),  # waiting is part of in flight: not added
        ({}, {"ready": 2, "in_flight": 8, "ttft_attainment": 0.5}, 3),  # SLO missed: ready + 1
        ({}, {"ready": 2, "in_flight": 8, "kv_usage": 0.95}, 3),  # KV saturated: ready + 1
        ({}, {"ready": 2, "in_flight": 8, "ttft_attainment": 0.95}, 1),  # SLO met: demand only
        ({}, {"ready": 2, "in_flight": 8, "ttft_attainment": None}, 1),  # no data: demand only
        ({}, {"ready": 0, "queued": 1, "kv_usage": 1.0}, 1),  # nothing ready: nothing saturated
        ({}, {"ready": 1, "in_flight": 40, "ttft_attainment": 0.1}, 4),  # demand beats ready + 1
        ({"max_replicas": 4}, {"in_flight": 100}, 4),  # ceiling
        ({"min_replicas": 2}, {}, 2),  # floor
        ({"min_replicas": 0}, {"idle_s": 300.0}, 0),  # idle for idle_timeout_s: zero
        ({"min_replicas": 0}, {"idle_s": 299.0}, 1),  # not idle long enough
        ({"min_replicas": 0}, {"idle_s": math.inf}, 0),  # never any request
        ({"min_replicas": 1}, {"idle_s": 1e9}, 1),  # zero only when allowed
        ({"min_replicas": 0}, {"idle_s": 1e9, "in_flight": 1}, 1),  # in flight: not idle
        ({"min_replicas": 0}, {"idle_s": 1e9, "queued": 1}, 1),  # queued: not idle
    ],
)
def test_recommendation(config, signals, expected):
    up, down, why = recommend(sig(**signals), cfg(**config))
    assert up == expected, why
    assert down >= up


@pytest.mark.parametrize(
    "tolerance, in_flight, up, down",
    [
        (0.1, 15, 2, 3),  # 15 / 8 -> 2 up; 15 / 7.2 -> 3: two would be too close to target
        (0.1, 14, 2, 2),
        (0.0, 15, 2, 2),
        (0.5, 15, 2, 4),
        (0.1, 0, 1, 1),
    ],
)
def test_scale_down_tolerance(tolerance, in_flight, up, down):
    assert recommend(sig(in_flight=in_flight), cfg(tolerance=tolerance))[:2] == (up, down)


def test_a_load_inside_the_tolerance_band_keeps_the_replica():
    c = cfg(scale_down_window_s=0.0, cooldown_s=0.0)
    held = decide(sig(ready=3, in_flight=15), initial_state(3, 0.0), c, 1.0)
    assert held.target == 3  # two would carry 7.5 each: above 90% of 8
    lower = decide(sig(ready=3, in_flight=14), initial_state(3, 0.0), c, 1.0)
    assert (lower.target, lower.direction) == (2, "down")


def run(config: AutoscaleConfig, start: int, steps: list[tuple[float, Signals]]) -> list[int]:
    """Targets after each decision, feeding each decision's state to the next."""
    state = initial_state(start, 0.0)
    targets = []
    for now, signals in steps:
        d = decide(signals, state, config, now)
        state = d.state
        targets.append(d.target)
    return targets


def test_scale_up_waits_for_the_up_window_and_a_short_spike_adds_nothing():
    c = cfg(scale_up_window_s=5.0)
    spike = [(t, sig(in_flight=24 if t <= 3 else 0)) for t in range(1, 20)]
    assert set(run(c, 1, spike)) == {1}
    sustained = [(t, sig(in_flight=24)) for t in range(1, 10)]
    # The start's recommendation (1) is in force until t=1, so it leaves the window at t=6.
    assert run(c, 1, sustained) == [1, 1, 1, 1, 1, 3, 3, 3, 3]


def test_scale_up_step_limit():
    c = cfg(scale_up_window_s=0.0, max_scale_up_step=2, max_replicas=8)
    assert run(c, 1, [(t, sig(in_flight=48)) for t in range(1, 5)]) == [3, 5, 6, 6]


def test_scale_down_waits_for_the_down_window_then_steps_with_cooldown():
    c = cfg(scale_down_window_s=300.0, cooldown_s=30.0, max_scale_down_step=1)
    steps = [(float(t), sig(ready=3)) for t in range(1, 400)]
    targets = run(c, 3, steps)
    changes = [
        (t, x)
        for (t, _), x, prev in zip(steps, targets, [3, *targets][:-1], strict=True)
        if x != prev
    ]
    # The start's 3 is in force until t=1: out of the window at t=301; then one step per cooldown.
    assert changes == [(301.0, 2), (331.0, 1)]


def test_down_window_keeps_the_highest_recent_recommendation():
    c = cfg(scale_up_window_s=0.0, scale_down_window_s=60.0, cooldown_s=0.0, max_replicas=8)
    loads = [40] * 5 + [8] * 100  # 5 replicas wanted, then 1
    targets = run(c, 1, [(t + 1.0, sig(in_flight=x)) for t, x in enumerate(loads)])
    assert max(targets) == 5
    first_down = targets.index(4)
    assert first_down == 5 + 60  # 40 was last recommended at t=5; gone from the window at t=66


def test_cooldown_blocks_scale_down_but_not_scale_up():
    c = cfg(scale_up_window_s=0.0, scale_down_window_s=0.0, cooldown_s=30.0, max_replicas=8)
    state = initial_state(1, 0.0)
    d = decide(sig(in_flight=24), state, c, 40.0)
    assert (d.target, d.direction) == (3, "up")
    d2 = decide(sig(in_flight=40), d.state, c, 41.0)  # up again inside the cooldown
    assert (d2.target, d2.direction) == (5, "up")
    held = decide(sig(in_flight=0), d2.state, c, 60.0)  # down inside the cooldown: held
    assert (held.target, held.direction) == (5, "none")
    assert "cooldown 11s left" in held.reason
    done = decide(sig(in_flight=0), held.state, c, 71.0)
    assert (done.target, done.direction) == (4, "down")


def test_saturation_counts_only_once_measured_on_the_current_replicas():
    c = cfg(scale_up_window_s=0.0, slo_window_s=30.0, max_replicas=8)
    missed = {"in_flight": 8, "ttft_attainment": 0.5}
    d = decide(sig(ready=2, **missed), initial_state(2, 0.0), c, 1.0)
    assert d.target == 2  # the ready count was first seen now: the attainment may predate it
    later = decide(sig(ready=2, **missed), d.state, c, 31.0)
    assert (later.target, later.direction) == (3, "up")
    assert "TTFT attainment 0.50 < 0.9" in later.reason
    starting = decide(sig(ready=2, starting=1, **missed), later.state, c, 90.0)
    assert starting.target == 3  # a replica is on its way: no other for the same evidence
    arrived = decide(sig(ready=3, **missed), starting.state, c, 100.0)
    assert arrived.target == 3  # the new replica has not been measured yet
    assert decide(sig(ready=3, **missed), arrived.state, c, 130.0).target == 4


def test_a_reverted_scale_down_sets_a_floor_for_flap_hold_s():
    c = cfg(scale_up_window_s=0.0, scale_down_window_s=60.0, cooldown_s=0.0, flap_hold_s=600.0)
    low = decide(sig(ready=2, in_flight=2), initial_state(2, -100.0), c, 0.0)
    down = decide(sig(ready=2, in_flight=2), low.state, c, 61.0)  # one down window of low load
    assert (down.target, down.direction) == (1, "down")
    # At one replica the same traffic is 16 in flight: the scale-down was wrong.
    back = decide(sig(ready=1, in_flight=16), down.state, c, 70.0)
    assert (back.target, back.direction) == (2, "up")
    assert "reverts a scale-down: floor 2 for 600s" in back.reason
    state, targets = back.state, []
    for t in range(71, 800, 10):
        d = decide(sig(ready=2, in_flight=2), state, c, float(t))
        state = d.state
        targets.append((t, d.target, d.reason))
    assert all(x == 2 for t, x, _ in targets if t < 670)  # held at 2 until the floor expires
    assert targets[-1][1] == 1
    assert "flap floor 2 for 369s more" in dict((t, r) for t, _, r in targets)[301]
    # A scale-up long after the last scale-down sets no floor.
    late = decide(sig(ready=1, in_flight=16), down.state, c, 500.0)
    assert late.direction == "up" and late.state.floor_until < 500.0


def test_idle_scale_to_zero_ignores_the_flap_floor():
    c = cfg(min_replicas=0, idle_timeout_s=60.0, cooldown_s=0.0, scale_up_window_s=0.0)
    state = replace(initial_state(1, 0.0), floor=1, floor_until=1e9)
    d = decide(sig(idle_s=60.0), state, c, 100.0)
    assert (d.target, d.direction) == (0, "down")


def test_cold_start_from_zero_skips_the_windows():
    c = cfg(min_replicas=0, scale_up_window_s=60.0)
    state = initial_state(0, 0.0)
    d = decide(sig(ready=0, queued=1, idle_s=0.0), state, c, 1.0)
    assert (d.target, d.direction) == (1, "up")
    assert "cold start" in d.reason
    many = decide(sig(ready=0, queued=40, idle_s=0.0), state, c, 1.0)
    assert many.target == c.max_scale_up_step  # at once, but no more than one step


def test_nothing_queued_at_zero_stays_at_zero():
    c = cfg(min_replicas=0)
    d = decide(sig(ready=0, idle_s=math.inf), initial_state(0, 0.0), c, 1.0)
    assert (d.target, d.direction) == (0, "none")


def test_idle_to_zero_after_the_timeout_without_the_down_window():
    c = cfg(min_replicas=0, idle_timeout_s=60.0, cooldown_s=30.0, scale_down_window_s=300.0)
    state = initial_state(1, 0.0)
    early = decide(sig(idle_s=59.0), state, c, 59.0)
    assert early.target == 1
    d = decide(sig(idle_s=60.0), early.state, c, 60.0)
    assert (d.target, d.direction) == (0, "down")
    assert "idle 60s" in d.reason
    cooling = decide(sig(idle_s=600.0), initial_state(1, 590.0), c, 600.0)
    assert cooling.target == 1 and "cooldown" in cooling.reason


def test_bounds_apply_at_once():
    c = cfg(min_replicas=2, max_replicas=4)
    assert decide(sig(), initial_state(6, 0.0), c, 1.0).target == 4
    assert decide(sig(), initial_state(1, 0.0), c, 1.0).target == 2


def test_reason_names_the_numbers():
    c = cfg(scale_up_window_s=0.0)
    d = decide(sig(ready=2, in_flight=23), initial_state(2, 0.0), c, 1.0)
    assert d.reason.startswith("load 23.0 / 8 + warm 0 = 3")
    assert "up 2 -> 3" in d.reason


def test_decide_is_pure():
    c = cfg()
    state = initial_state(2, 0.0)
    s = sig(in_flight=30, queued=4)
    before = (replace(state), replace(s), replace(c))
    first = decide(s, state, c, 10.0)
    assert (state, s, c) == before
    assert decide(s, state, c, 10.0) == first


def test_no_flapping_on_a_noisy_oscillating_load():
    """Load swinging 4..28 every 40 s with noise, for 30 simulated minutes: the naive
    recommendation changes hundreds of times, the decided target a handful."""
    rng = random.Random(7)
    c = cfg(max_replicas=8)
    steps = []
    for t in range(1, 1801):
        load = 16 + 12 * math.sin(2 * math.pi * t / 40) + rng.uniform(-4, 4)
        steps.append((float(t), sig(ready=2, in_flight=max(0, round(load)))))
    targets = run(c, 2, steps)
    naive = [recommend(s, c)[0] for _, s in steps]
    flips = lambda xs: sum(a != b for a, b in zip(xs[:-1], xs[1:], strict=True))  # noqa: E731
    assert flips(naive) > 300
    assert flips(targets) <= 3
    assert max(targets) <= 5  # peak load ~32: no runaway
