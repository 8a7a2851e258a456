"""`herd top` against a small fake gateway (aiohttp on loopback) serving /admin/autoscaler,
/admin/replicas and /metrics: what `--once` prints, the admin key, errors in the view, and
tokens/s from two polls."""

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from herd.cli import main
from herd.cli.top_poll import Snapshot, poll, token_rates

KEY = "admin-secret"
REPLICAS = [
    {"url": "http://127.0.0.1:9101", "state": "ready", "version": "v1", "in_flight": 3,
     "num_waiting": 1.0, "num_running": 2.0, "kv_usage": 0.42, "generation_tokens": 1000},
    {"url": "http://127.0.0.1:9102", "state": "loading", "version": "v2-canary", "in_flight": 0},
]  # fmt: skip
REASON = "load 23.0 / 8 + warm 0 = 3: up 2 -> 3"


def metrics_page() -> bytes:
    """The gateway's two gauges, written by prometheus_client itself."""
    registry = CollectorRegistry()
    Gauge("herd_gateway_requests_queued", "queued", registry=registry).set(5)
    Gauge("herd_gateway_requests_in_flight", "in flight", registry=registry).set(7)
    return generate_latest(registry)


def fake_gateway(autoscaled: bool = True) -> web.Application:
    def admin(handler):
        async def guarded(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {KEY}":
                error = {"message": "admin key required", "type": "authentication_error"}
                return web.json_response({"error": error}, status=401)
            return await handler(request)

        return guarded

    async def autoscaler(_request):
        if not autoscaled:
            return web.json_response({"error": {"message": "not autoscaled"}}, status=404)
        last = {"target": 3, "reason": REASON, "at": time.time() - 12}
        return web.json_response(
            {"desired": 3, "actual": 2, "standby": 1, "last_decision": last, "config": {}}
        )

    async def replicas(_request):
        return web.json_response({"replicas": REPLICAS})

    async def metrics(_request):
        return web.Response(body=metrics_page(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/admin/autoscaler", admin(autoscaler))
    app.router.add_get("/admin/replicas", admin(replicas))
    app.router.add_get("/metrics", metrics)
    return app


@pytest.fixture
async def gateway_url():
    urls = []

    async def start(autoscaled: bool = True) -> str:
        runner = web.AppRunner(fake_gateway(autoscaled))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        urls.append(f"http://{host}:{port}")
        return urls[-1]

    runners: list[web.AppRunner] = []
    yield start
    for runner in runners:
        await runner.cleanup()


async def top_once(capsys, *argv: str) -> tuple[int, str]:
    """`herd top --once` in a thread (it runs its own event loop) while the fake serves here."""
    rc = await asyncio.to_thread(main, ["top", "--once", *argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.out


async def test_once_shows_replicas_versions_queue_and_the_last_decision(gateway_url, capsys):
    url = await gateway_url()
    rc, out = await top_once(capsys, "--url", url, "--admin-key", KEY)
    assert rc == 0, out
    for replica in REPLICAS:
        assert replica["url"] in out and replica["version"] in out
    assert "ready" in out and "loading" in out
    assert "42%" in out  # KV usage
    assert "queued 5  in flight 7" in out
    assert "desired 3, actual 2, standby 1" in out
    assert REASON in out and "12s ago" in out
    row = next(line for line in out.splitlines() if "9102" in line)
    assert row.count("-") >= 4  # fields the replica did not report are dashes, not zeros


async def test_not_autoscaled_says_so(gateway_url, capsys):
    url = await gateway_url(autoscaled=False)
    rc, out = await top_once(capsys, "--url", url, "--admin-key", KEY)
    assert rc == 0
    assert "autoscaler off" in out and "v2-canary" in out


async def test_a_wrong_key_is_shown_in_the_view(gateway_url, capsys):
    url = await gateway_url()
    rc, out = await top_once(capsys, "--url", url, "--admin-key", "wrong")
    assert rc == 1
    assert "HTTP 401" in out and "admin key required" in out and "--admin-key" in out
    assert "queued 5" in out  # /metrics needs no key and still shows


async def test_a_gateway_that_is_down_is_shown_in_the_view(capsys):
    from herd.fleet.supervisor import free_port

    rc, out = await top_once(capsys, "--url", f"http://127.0.0.1:{free_port('127.0.0.1')}")
    assert rc == 1 and "gateway unreachable" in out


async def test_tokens_per_second_from_two_polls(gateway_url):
    url = await gateway_url()
    async with aiohttp.ClientSession() as session:
        first = await poll(session, url, KEY)
    assert first.errors == [] and len(first.replicas) == 2
    later = Snapshot(
        at=first.at + 2.0,
        replicas=[{**REPLICAS[0], "generation_tokens": 1300}, REPLICAS[1]],
    )
    assert token_rates(first, later) == {REPLICAS[0]["url"]: pytest.approx(150.0)}
    restarted = Snapshot(at=first.at + 4.0, replicas=[{**REPLICAS[0], "generation_tokens": 10}])
    assert token_rates(later, restarted) == {}  # a counter that went back has no rate
    assert token_rates(None, first) == {}
