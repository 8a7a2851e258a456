"""An autoscaled fleet of real `herd replica` processes (tiny model) behind an in-process gateway:
a burst brings up a second replica and the fleet shrinks back when it stops; idle scales it to
zero and the next request is served by a cold start; canary, promote and abort lose nothing."""

import asyncio
import collections
import os
import signal

import aiohttp
import pytest
import pytest_asyncio
from fleettools import REPLICA_ARGS, Load
from gwtools import fast_config

from herd.fleet.config import AutoscaleConfig, FleetConfig, ServeConfig
from herd.fleet.serve import LocalFleet
from herd.gateway.app import Gateway, serve
from herd.protocol.prometheus import parse_metrics
from waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")
ADMIN = {"Authorization": "Bearer adm"}


class Running:
    def __init__(self, gateway: Gateway, fleet: LocalFleet, url: str, session):
        self.gateway, self.fleet, self.url, self.session = gateway, fleet, url, session
        self.model = ""  # the served model's id, read from /v1/models

    def ready(self) -> int:
        return len(self.gateway.replicas.ready())

    async def admin(self, method: str, path: str, body=None):
        async with self.session.request(method, self.url + path, json=body, headers=ADMIN) as r:
            return r.status, await r.json()

    async def metric(self, name: str) -> float:
        async with self.session.get(self.url + "/metrics") as resp:
            return parse_metrics(await resp.text()).get(name, 0.0)


async def start_fleet(model_dir, logs, replicas: int, autoscale: AutoscaleConfig | None):
    gw_config = fast_config([], admin_key="adm")
    gateway = Gateway(gw_config)
    runner = await serve(gateway, "127.0.0.1", gw_config.port)
    fleet_config = FleetConfig(
        model=str(model_dir), replicas=replicas, extra_args=REPLICA_ARGS, drain_timeout_s=30
    )
    config = ServeConfig(gateway=gw_config, fleet=fleet_config)
    if autoscale is not None:
        config.autoscale = autoscale
    fleet = LocalFleet(config, gateway, logs)
    gateway.fleet = fleet
    await fleet.start()
    session = aiohttp.ClientSession()
    running = Running(gateway, fleet, f"http://127.0.0.1:{gw_config.port}", session)
    async with session.get(running.url + "/v1/models") as resp:
        running.model = (await resp.json())["data"][0]["id"]
    return running, runner


async def stop_fleet(running: Running, runner) -> None:
    await running.session.close()
    await running.fleet.supervisor.stop()
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scaled(tiny_model_dir, tmp_path_factory):
    autoscale = AutoscaleConfig(
        enabled=True, min_replicas=0, max_replicas=2, target_load=2.0, interval_s=0.2,
        scale_up_window_s=0.0, scale_down_window_s=3.0, cooldown_s=1.0, idle_timeout_s=4.0,
        cold_start_wait_s=120.0,
    )  # fmt: skip
    running, runner = await start_fleet(
        tiny_model_dir, tmp_path_factory.mktemp("scaled-logs"), 1, autoscale
    )
    yield running
    await stop_fleet(running, runner)


def completion(running: Running, max_tokens: int) -> dict:
    """A sampled request (no temperature 0, no seed), so the response cache never answers it."""
    return {
        "model": running.model,
        "prompt": "Once upon a time",
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }  # fmt: skip


async def test_burst_scales_up_then_back_down_without_failures(scaled):
    assert scaled.ready() == 1
    load = Load(
        scaled.session, scaled.url + "/v1/completions", completion(scaled, 64), concurrency=6
    )
    load.start()
    try:
        await until(lambda: scaled.ready() == 2, 180, "a second replica under the burst")
        status, view = await scaled.admin("GET", "/admin/autoscaler")
        assert status == 200 and view["desired"] == 2 and view["actual"] == 2
        assert "up" in view["last_decision"]["reason"] and view["config"]["max_replicas"] == 2
    finally:
        statuses = await load.stop()
    assert statuses and load.failures() == [], load.bodies[:3]
    await until(lambda: len(scaled.fleet.supervisor.serving()) == 1, 60, "back to one replica")
    assert await scaled.metric("herd_autoscaler_decisions_total") >= 2
    assert await scaled.metric("herd_replica_cold_start_seconds_count") >= 1


async def test_idle_scales_to_zero_and_a_request_cold_starts(scaled):
    await until(lambda: not scaled.fleet.supervisor.slots, 60, "scaled to zero")
    await until(lambda: not scaled.gateway.replicas.all(), 60, "last replica drained and gone")
    async with scaled.session.get(scaled.url + "/ready") as resp:
        assert resp.status == 200  # holding requests at zero is being ready
    async with scaled.session.post(
        scaled.url + "/v1/completions", json=completion(scaled, 4)
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["usage"]["completion_tokens"] == 4
    assert scaled.ready() == 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fixed(tiny_model_dir, tmp_path_factory):
    running, runner = await start_fleet(
        tiny_model_dir, tmp_path_factory.mktemp("canary-logs"), 2, None
    )
    yield running
    await stop_fleet(running, runner)


async def requests_by_version(running: Running) -> collections.Counter:
    _, listing = await running.admin("GET", "/admin/replicas")
    counts = collections.Counter()
    for replica in listing["replicas"]:
        counts[replica["version"]] += replica["requests"]
    return counts


async def test_canary_share_then_promote_and_abort_lose_nothing(fixed):
    status, body = await fixed.admin(
        "POST",
        "/admin/rollout?wait=1",
        {"version": "v2", "canary_percent": 25, "args": REPLICA_ARGS},
    )
    assert status == 200 and body["status"] == "canary", body
    before = await requests_by_version(fixed)
    load = Load(fixed.session, fixed.url + "/v1/completions", completion(fixed, 1), concurrency=4)
    load.start()
    await until(lambda: len(load.statuses) >= 200, 120, "200 requests")
    await load.stop()
    assert load.failures() == []
    after = await requests_by_version(fixed)
    share = (after["v2"] - before["v2"]) / sum((after - before).values())
    assert 0.15 <= share <= 0.35, (before, after)

    load = Load(
        fixed.session, fixed.url + "/v1/completions", completion(fixed, 8), concurrency=4
    ).start()
    status, body = await fixed.admin("POST", "/admin/rollout/promote?wait=1")
    assert status == 200 and body["status"] == "done" and body["version"] == "v2", body
    _, listing = await fixed.admin("GET", "/admin/replicas")
    assert {r["version"] for r in listing["replicas"]} == {"v2"}
    assert len(listing["replicas"]) == 2

    status, body = await fixed.admin(
        "POST", "/admin/rollout?wait=1", {"version": "v3", "canary_percent": 50}
    )
    assert body["status"] == "canary", body
    status, body = await fixed.admin("POST", "/admin/rollout/abort?wait=1")
    assert status == 200 and body == {"status": "aborted", "version": "v3"}
    await load.stop()
    assert load.statuses and load.failures() == [], load.bodies[:3]
    _, listing = await fixed.admin("GET", "/admin/replicas")
    assert {r["version"] for r in listing["replicas"]} == {"v2"}


async def test_bad_rollouts_are_clear_errors(fixed):
    status, body = await fixed.admin("POST", "/admin/rollout", {"canary_percent": 250})
    assert status == 400 and body["error"]["param"] == "canary_percent"
    status, body = await fixed.admin("POST", "/admin/rollout", {"model": "/nonexistent"})
    assert status == 400 and body["error"]["param"] == "model"
    status, body = await fixed.admin("POST", "/admin/rollout", {"colour": "blue"})
    assert status == 400 and "colour" in body["error"]["message"]
    status, body = await fixed.admin("POST", "/admin/rollout/promote")
    assert status == 409
    status, body = await fixed.admin("GET", "/admin/autoscaler")
    assert status == 404  # a fixed fleet has no autoscaler


async def test_interrupted_replica_is_replaced_at_once_without_failures(fixed):
    fixed.fleet.supervisor.config.interruptible = True  # spot capacity
    victim = fixed.gateway.replicas.ready()[0].pid
    load = Load(fixed.session, fixed.url + "/v1/completions", completion(fixed, 8), concurrency=4)
    load.start()
    await until(lambda: len(load.statuses) >= 10, 60, "traffic before the notice")
    os.kill(victim, signal.SIGTERM)  # the interruption notice: drain now

    def replaced() -> bool:
        ready = fixed.gateway.replicas.ready()
        return len(ready) == 2 and victim not in {r.pid for r in ready}

    await until(replaced, 120, "the interrupted replica replaced")
    await load.stop()
    assert load.failures() == [], load.bodies[:3]


async def test_fallback_pool_answers_under_its_own_name_when_the_main_pool_is_full(
    tiny_model_dir, tmp_path
):
    gw_config = fast_config([], admin_key="adm")
    gw_config.proxy.max_in_flight_per_replica = 1
    gw_config.proxy.queue_timeout_s = 60.0
    gateway = Gateway(gw_config)
    runner = await serve(gateway, "127.0.0.1", gw_config.port)
    fleet_config = FleetConfig(
        model=str(tiny_model_dir), replicas=1, extra_args=REPLICA_ARGS, drain_timeout_s=30,
        fallback_model=str(tiny_model_dir), fallback_after_s=0.2,
        fallback_args=[*REPLICA_ARGS, "--served-model-name", "small-fallback"],
    )  # fmt: skip
    fleet = LocalFleet(ServeConfig(gateway=gw_config, fleet=fleet_config), gateway, tmp_path)
    gateway.fleet = fleet
    await fleet.start()
    running = Running(gateway, fleet, f"http://127.0.0.1:{gw_config.port}", aiohttp.ClientSession())
    try:
        async with running.session.get(running.url + "/v1/models") as resp:
            running.model = (await resp.json())["data"][0]["id"]
        assert running.model != "small-fallback"  # the pool is not listed

        async def one() -> tuple[int, dict]:
            url = running.url + "/v1/completions"
            # long enough that the queued ones wait past fallback_after_s however fast decode is
            async with running.session.post(url, json=completion(running, 400)) as resp:
                return resp.status, await resp.json()

        answers = await asyncio.gather(*(one() for _ in range(6)))
        assert [status for status, _ in answers] == [200] * 6, answers
        models = collections.Counter(body["model"] for _, body in answers)
        assert models["small-fallback"] >= 1 and models[running.model] >= 1, models
    finally:
        await stop_fleet(running, runner)
