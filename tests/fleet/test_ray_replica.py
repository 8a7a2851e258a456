"""`HerdReplica`, the class behind each Ray Serve replica, without Ray: it starts its server (here
the fake upstream, through the command template), forwards Starlette requests to it unchanged
(streams too), and reports the server's death to Serve's health check and to clients as 503."""

import sys

import httpx
import pytest
from gwtools import FAKE

from herd.fleet.ray_replica import HerdReplica
from waiting import wait_until

starlette = pytest.importorskip("starlette")  # comes with the `ray` extra
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402

BODY = {"model": "fake-model", "prompt": "hello world", "max_tokens": 4, "temperature": 0}


@pytest.fixture
def replica():
    command = [sys.executable, str(FAKE), "--port", "{port}", "--model", "{model}"]
    r = HerdReplica("m", ["--name", "r1"], command=command, startup_timeout_s=60)
    yield r
    r.__del__()


def client(replica: HerdReplica) -> httpx.AsyncClient:
    async def serve_handler(request):  # what Serve's proxy does: the request, to __call__
        return await replica(request)

    app = Starlette(routes=[Route("/{path:path}", serve_handler, methods=["GET", "POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")


async def test_answers_pass_through_unchanged(replica):
    async with client(replica) as via_serve, httpx.AsyncClient(base_url=replica.url) as direct:
        for body in (BODY, {**BODY, "stream": True}):
            got = await via_serve.post("/v1/completions", json=body)
            want = await direct.post("/v1/completions", json=body)
            assert got.status_code == want.status_code == 200
            assert got.headers["content-type"] == want.headers["content-type"]
            assert got.content == want.content
        ready = await via_serve.get("/ready")
        assert ready.status_code == 200
        missing = await via_serve.post("/v1/nothing", json={})
        assert missing.status_code == (await direct.post("/v1/nothing", json={})).status_code


async def test_a_dead_server_fails_health_and_answers_503(replica):
    replica.check_health()
    replica.proc.kill()
    wait_until(lambda: replica.proc.poll() is not None, timeout=10, what="the server gone")
    with pytest.raises(RuntimeError, match="exited"):
        replica.check_health()
    async with client(replica) as via_serve:
        resp = await via_serve.post("/v1/completions", json=BODY)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "replica_unavailable"


def test_graceful_shutdown_stops_the_server(replica):
    replica.__del__()
    assert replica.proc.poll() is not None
