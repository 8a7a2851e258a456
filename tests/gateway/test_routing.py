"""Routing policies as pure functions over replicas with set loads."""

import collections

import pytest

from herd.gateway.replicas import Replica, ReplicaState
from herd.gateway.routing import POLICIES, PrefixAffinity, RouteRequest, make_policy


def replicas(*loads, waiting=None):
    out = []
    for i, load in enumerate(loads):
        r = Replica(url=f"http://r{i}", state=ReplicaState.READY)
        r.observed.in_flight = load
        if waiting:
            r.reported.num_waiting = waiting[i]
        out.append(r)
    return out


def test_registry_names_and_error_lists_valid_names():
    assert set(POLICIES) == {"round_robin", "least_outstanding", "prefix_affinity"}
    with pytest.raises(ValueError, match="least_outstanding"):
        make_policy("fastest")


def test_round_robin_cycles_in_url_order():
    policy = make_policy("round_robin")
    rs = replicas(5, 0, 9)
    assert [policy.choose(rs, RouteRequest("m")).url for _ in range(6)] == [
        "http://r0",
        "http://r1",
        "http://r2",
    ] * 2


def test_least_outstanding_prefers_fewest_in_flight_then_reported_queue():
    policy = make_policy("least_outstanding")
    assert policy.choose(replicas(3, 1, 2), RouteRequest("m")).url == "http://r1"
    tied = replicas(1, 1, 4, waiting=[7, 2, 0])
    assert {policy.choose(tied, RouteRequest("m")).url for _ in range(5)} == {"http://r1"}


def test_least_outstanding_spreads_over_equals():
    policy = make_policy("least_outstanding")
    rs = replicas(0, 0, 0)
    assert len({policy.choose(rs, RouteRequest("m")).url for _ in range(6)}) == 3


def test_prefix_affinity_is_sticky_and_spreads_keys():
    policy = make_policy("prefix_affinity")
    rs = replicas(0, 0, 0)
    homes = {}
    for k in range(60):
        req = RouteRequest("m", prefix_key=f"system prompt {k}")
        first = policy.choose(rs, req).url
        assert all(policy.choose(rs, req).url == first for _ in range(3))
        homes[k] = first
    counts = collections.Counter(homes.values())
    assert len(counts) == 3 and min(counts.values()) >= 8  # 64 vnodes spread keys fairly


def test_session_key_wins_over_prefix():
    policy = make_policy("prefix_affinity")
    rs = replicas(0, 0, 0)
    a = policy.choose(rs, RouteRequest("m", session_key="s1", prefix_key="x")).url
    assert all(
        policy.choose(rs, RouteRequest("m", session_key="s1", prefix_key=f"y{i}")).url == a
        for i in range(10)
    )


def test_prefix_affinity_spills_to_least_loaded_when_home_is_over_its_share():
    policy = make_policy("prefix_affinity", load_factor=1.25)
    rs = replicas(0, 0, 0)
    req = RouteRequest("m", prefix_key="hot prefix")
    home = policy.choose(rs, req)
    home.observed.in_flight = 6  # mean of (6+0+0+1)/3 * 1.25 -> cap 3
    spilled = policy.choose(rs, req)
    assert spilled is not home and spilled.observed.in_flight == 0


def test_removing_a_replica_moves_only_its_keys():
    policy = make_policy("prefix_affinity")
    rs = replicas(0, 0, 0)
    keys = [RouteRequest("m", prefix_key=f"k{i}") for i in range(100)]
    before = {r.prefix_key: policy.choose(rs, r).url for r in keys}
    after = {r.prefix_key: policy.choose(rs[:2], r).url for r in keys}
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k] == "http://r2" for k in moved)


def test_ring_cache_is_bounded():
    policy = PrefixAffinity()
    for n in range(20):
        policy.choose(
            replicas(*([0] * (n % 5 + 1)))[: n % 5 + 1]
            + [Replica(url=f"http://x{n}", state=ReplicaState.READY)],
            RouteRequest("m", prefix_key="k"),
        )
    assert len(policy._rings) <= PrefixAffinity.max_rings
