"""A fleet of three real `herd replica` processes (tiny model) behind an in-process gateway:
SIGKILL under load, rolling restart under load, prefix affinity against round robin."""

import asyncio
import os
import signal

import aiohttp
import pytest
import pytest_asyncio
from fleettools import REPLICA_ARGS, Load, read_stream, stream_end
from gwtools import fast_config

from herd.fleet.config import FleetConfig, ServeConfig
from herd.fleet.serve import LocalFleet
from herd.gateway.app import Gateway, serve
from herd.gateway.routing import make_policy
from herd.protocol.prometheus import parse_metrics
from waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Fleet:
    def __init__(self, gateway, supervisor, url, session):
        self.gateway, self.supervisor, self.url, self.session = gateway, supervisor, url, session

    def pids(self) -> dict[str, int]:
        return {r.url: r.pid for r in self.gateway.replicas.all()}

    async def wait_ready(self, n=3, exclude_pids=(), timeout=90.0):
        def all_ready() -> bool:
            rs = self.gateway.replicas.all()
            return len(rs) == n and all(
                r.state == "ready" and r.pid not in exclude_pids for r in rs
            )

        await until(all_ready, timeout, f"{n} replicas ready")

    async def prefix_hits(self) -> float:
        total = 0.0
        for replica in self.gateway.replicas.ready():
            async with self.session.get(replica.url + "/metrics") as resp:
                total += parse_metrics(await resp.text()).get("herd_prefix_cache_hits_total", 0)
        return total


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tiny_model_dir, tmp_path_factory):
    config = fast_config([], admin_key="adm")
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    fleet_config = FleetConfig(
        model=str(tiny_model_dir),
        replicas=3,
        extra_args=REPLICA_ARGS,
        restart_backoff_base_s=0.2,
        drain_timeout_s=30,
    )
    serve_config = ServeConfig(gateway=config, fleet=fleet_config)
    local = LocalFleet(serve_config, gateway, tmp_path_factory.mktemp("fleet-logs"))
    gateway.fleet = local
    supervisor = local.supervisor
    await local.start()
    session = aiohttp.ClientSession()
    yield Fleet(gateway, supervisor, f"http://127.0.0.1:{config.port}", session)
    await session.close()
    await supervisor.stop()
    await runner.cleanup()


def chat(text, **extra):
    return {"model": "tiny-llama0", "messages": [{"role": "user", "content": text}], **extra}


async def model_name(fleet) -> str:
    async with fleet.session.get(fleet.url + "/v1/models") as resp:
        return (await resp.json())["data"][0]["id"]


async def test_sigkill_one_replica_under_load(fleet):
    model = await model_name(fleet)
    # Long enough that no stream can end before the kill, even on a loaded machine.
    long = {"model": model, "prompt": "Tell me a story", "max_tokens": 1000, "ignore_eos": True}
    streams = [
        asyncio.create_task(read_stream(fleet.session, fleet.url + "/v1/completions", long))
        for _ in range(6)
    ]
    # Every long stream dispatched (least outstanding puts two on each replica), then the load.
    await until(lambda: sum(r.observed.in_flight for r in fleet.gateway.replicas.ready()) >= 6)
    load = Load(
        fleet.session,
        fleet.url + "/v1/completions",
        {"model": model, "prompt": "hello", "max_tokens": 4},
        concurrency=6,
    ).start()
    await until(lambda: len(load.statuses) >= 6, 30, "the load being served")
    victim = max(fleet.gateway.replicas.ready(), key=lambda r: r.observed.in_flight)
    os.kill(victim.pid, signal.SIGKILL)
    ends = [stream_end(events) for events in await asyncio.wait_for(asyncio.gather(*streams), 90)]
    await fleet.wait_ready(3, exclude_pids={victim.pid})  # the supervisor brought it back
    served = len(load.statuses)  # the load goes on being served by the restored fleet
    await until(lambda: len(load.statuses) >= served + 6, 30, "requests after the restart")
    assert load.failures() == [], load.bodies[:3]
    await load.stop()
    # Streams on the victim were resumed on another replica: every one completed.
    assert ends == ["done"] * 6
    assert fleet.gateway.metrics.retries._value.get() >= 1


async def test_rolling_restart_under_load(fleet):
    model = await model_name(fleet)
    before = set(fleet.pids().values())
    # Steady, light load: two paced users keep requests in flight through every replacement
    # without starving the starting replicas of CPU (a tight loop tripled the rollout's time).
    load = Load(
        fleet.session,
        fleet.url + "/v1/chat/completions",
        chat("hi", model=model, max_tokens=2),
        concurrency=2,
        pause_s=0.05,
    ).start()
    async with fleet.session.post(
        fleet.url + "/admin/rollout?wait=1", headers={"Authorization": "Bearer adm"}
    ) as resp:
        assert await resp.json() == {"status": "done", "replaced": 3, "version": "v1"}
    await fleet.wait_ready(3, exclude_pids=before)
    statuses = await load.stop()
    assert load.failures() == [], load.bodies[:3]
    assert len(statuses) > 10


async def send_prefixed(fleet, model, tag, concurrency=1):
    """5 shared system prompts x 4 users, one at a time. Five, not a multiple of the three
    replicas, so round robin does not happen to keep each system prompt on one replica."""
    systems = [
        f"{tag} system prompt {k}: " + "You are a helpful assistant. " * 12 for k in range(5)
    ]
    reqs = [
        {
            "model": model,
            "max_tokens": 1,
            "messages": [
                {"role": "system", "content": s},
                {"role": "user", "content": f"question {u}"},
            ],
        }
        for u in range(4)
        for s in systems
    ]
    sem = asyncio.Semaphore(concurrency)

    async def one(req):
        async with sem, fleet.session.post(fleet.url + "/v1/chat/completions", json=req) as resp:
            assert resp.status == 200, await resp.read()

    await asyncio.gather(*(one(r) for r in reqs))


async def test_prefix_affinity_raises_prefix_cache_hits_and_spills(fleet):
    model = await model_name(fleet)
    dispatcher = fleet.gateway.dispatcher
    results = {}
    for name in ("round_robin", "prefix_affinity"):
        dispatcher.policy = make_policy(name)
        before = await fleet.prefix_hits()
        # Each answer left its replica after the engine step that counted its lookup.
        await send_prefixed(fleet, model, name)
        results[name] = await fleet.prefix_hits() - before
    assert results["prefix_affinity"] > results["round_robin"] > 0, results
    # One hot prefix under concurrent load spills beyond its home replica.
    served = {r.url: r.observed.requests for r in fleet.gateway.replicas.ready()}
    hot = chat("You are a helpful assistant. " * 12, model=model, max_tokens=40, ignore_eos=True)

    async def post():
        async with fleet.session.post(fleet.url + "/v1/chat/completions", json=hot) as resp:
            assert resp.status == 200, await resp.read()

    await asyncio.wait_for(asyncio.gather(*(post() for _ in range(12))), 60)
    replicas = fleet.gateway.replicas.ready()
    grew = [r.url for r in replicas if r.observed.requests > served.get(r.url, 0)]
    assert len(grew) >= 2
    dispatcher.policy = make_policy("least_outstanding")
