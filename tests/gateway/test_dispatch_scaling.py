"""The dispatcher's knobs an autoscaling fleet turns: a canary split by version, holding requests
while a replica cold-starts from zero, and refusing at once at the ceiling."""

import asyncio
import collections
import random

import pytest

from herd.gateway.config import ProxyConfig
from herd.gateway.dispatch import Dispatcher
from herd.gateway.errors import GatewayError
from herd.gateway.load import LoadTracker
from herd.gateway.replicas import ReplicaSet, ReplicaState
from herd.gateway.routing import RouteRequest, make_policy
from waiting import until


def dispatcher(**proxy) -> Dispatcher:
    return Dispatcher(ReplicaSet(), make_policy("least_outstanding"), ProxyConfig(**proxy))


def test_split_follows_weights_among_live_versions():
    d = dispatcher()
    d.replicas.add("http://a", ReplicaState.READY, version="v1")
    d.replicas.add("http://b", ReplicaState.READY, version="v2")
    assert d.pick_version() is None  # no split: any replica
    d.split = {"v1": 75.0, "v2": 25.0}
    random.seed(7)
    picks = collections.Counter(d.pick_version() for _ in range(4000))
    assert 0.22 < picks["v2"] / 4000 < 0.28
    d.replicas.set_state("http://b", ReplicaState.DRAINING)  # v2 has nothing ready
    assert {d.pick_version() for _ in range(50)} == {"v1"}


async def test_a_version_routes_only_to_its_replicas():
    d = dispatcher()
    d.replicas.add("http://a", ReplicaState.READY, version="v1")
    d.replicas.add("http://b", ReplicaState.READY, version="v2")
    for _ in range(5):
        replica = await d.acquire(RouteRequest("m", version="v2"))
        assert replica.url == "http://b"
    # A version with no ready replica left yields to the others rather than failing.
    d.replicas.remove("http://b")
    assert (await d.acquire(RouteRequest("m", version="v2"))).url == "http://a"


async def test_at_zero_a_request_waits_for_the_cold_start_then_is_served():
    d = dispatcher(queue_timeout_s=0.1)
    woken = []
    d.on_wait = lambda: woken.append(True)
    with pytest.raises(GatewayError) as refused:
        await d.acquire(RouteRequest("m"))
    assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    d.cold_wait_s = 30.0
    waiter = asyncio.create_task(d.acquire(RouteRequest("m")))
    await until(lambda: d.waiting == 1, 5, "the request held at zero")
    assert d.waiting == 1 and d.oldest_wait_s() >= 0 and woken
    d.replicas.add("http://a", ReplicaState.READY)
    assert (await asyncio.wait_for(waiter, 5)).url == "http://a"
    assert d.waiting == 0


async def test_at_the_ceiling_a_full_queue_is_refused_at_once():
    d = dispatcher(max_in_flight_per_replica=1, queue_timeout_s=5.0)
    d.replicas.add("http://a", ReplicaState.READY)
    await d.acquire(RouteRequest("m"))  # the only slot
    d.ceiling_queue = 1
    first = asyncio.create_task(d.acquire(RouteRequest("m")))
    await until(lambda: d.waiting == 1, 5, "the first request queued")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(GatewayError) as refused:
        await d.acquire(RouteRequest("m"))
    assert refused.value.status == 429 and "Retry-After" in refused.value.headers
    assert loop.time() - t0 < 1.0
    d.release(d.replicas.get("http://a"))
    assert (await asyncio.wait_for(first, 5)).url == "http://a"


def test_load_tracker_window_and_idle():
    load = LoadTracker(window_s=10)
    assert load.idle_s(0) == float("inf") and load.attainment(1.0, 0) is None
    load.arrived(100.0)
    for t, ttft in [(100, 0.5), (101, 3.0), (102, 0.2), (103, 1.0)]:
        load.first_token(ttft, t)
    assert load.attainment(1.0, 103) == 0.75
    assert load.idle_s(105.0) == 5.0
    assert load.attainment(1.0, 200) is None  # all older than the window


async def test_fallback_pool_takes_a_request_that_waited_too_long():
    d = dispatcher(max_in_flight_per_replica=1, queue_timeout_s=5.0)
    d.replicas.add("http://main", ReplicaState.READY)
    d.replicas.add("http://small", ReplicaState.READY).fallback_model = "small-model"
    assert [r.url for r in d.replicas.ready()] == ["http://main"]  # never routed normally
    await d.acquire(RouteRequest("m"))  # the main pool is full now
    d.fallback_after_s = 0.05
    replica = await asyncio.wait_for(d.acquire(RouteRequest("m")), 2)
    assert replica.url == "http://small" and replica.fallback_model == "small-model"


async def test_without_a_fallback_pool_fallback_replicas_get_nothing():
    d = dispatcher(max_in_flight_per_replica=1, queue_timeout_s=0.1)
    d.replicas.add("http://main", ReplicaState.READY)
    d.replicas.add("http://small", ReplicaState.READY).fallback_model = "small-model"
    await d.acquire(RouteRequest("m"))
    with pytest.raises(GatewayError) as refused:
        await d.acquire(RouteRequest("m"))
    assert refused.value.status == 429
