"""`BatchRoutes` in-process behind the shared error middleware: malformed uploads and bodies,
bad query values and oversize files are OpenAI errors with the right status, never a 500."""

import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from herd.batch.routes import BatchRoutes, mount_off
from herd.batch.runner import BatchRunner
from herd.batch.store import BatchStore
from herd.protocol.errors import error_middleware, log_refusal

log = logging.getLogger("test.batch")


async def _send(batch, body, request_id):
    return 200, {"ok": True}


def app_with(tmp_path, on: bool = True) -> web.Application:
    counter = Counter("refused", "x", ["status", "reason"], registry=CollectorRegistry())

    def refuse(request, err):
        return log_refusal(log, counter, request, err, "-")

    app = web.Application(middlewares=[error_middleware(refuse, 1 << 20, "internal error", log)])
    if not on:
        mount_off(app, "start with --batch-dir")
        return app
    store = BatchStore(tmp_path)
    runner = BatchRunner(store, _send)
    BatchRoutes(store, runner, lambda r: (r.headers.get("x-owner", "a"), "k"), 100, 5.0).add_routes(
        app
    )
    return app


@pytest.fixture
async def http(tmp_path):
    client = TestClient(TestServer(app_with(tmp_path)))
    await client.start_server()
    yield client
    await client.close()


async def error_of(resp) -> tuple[int, dict]:
    return resp.status, (await resp.json())["error"]


def form(data: bytes, purpose: str | None = "batch", filename: str = "a.jsonl") -> aiohttp.FormData:
    f = aiohttp.FormData()
    if purpose is not None:
        f.add_field("purpose", purpose)
    f.add_field("file", data, filename=filename)
    return f


async def test_bad_uploads(http, tmp_path):
    status, err = await error_of(await http.post("/v1/files", json={"purpose": "batch"}))
    assert status == 400 and err["param"] == "file"
    status, err = await error_of(await http.post("/v1/files", data=form(b"x" * 101)))
    assert status == 413 and err["code"] == "file_too_large"
    status, err = await error_of(await http.post("/v1/files", data=form(b"{}", purpose=None)))
    assert status == 400 and err["param"] == "purpose"
    garbage = await http.post(
        "/v1/files",
        data=b"--nope\r\ngarbage",
        headers={"Content-Type": "multipart/form-data; boundary=zzz"},
    )
    assert garbage.status == 400
    assert list((tmp_path / "files").iterdir()) == []  # no partial upload left behind


async def test_bad_batch_bodies_and_queries(http):
    ok = await (await http.post("/v1/files", data=form(b"{}\n"))).json()
    cases = [
        (b"not json", None),
        (b"[]", None),
        (b'{"endpoint": "/v1/completions", "completion_window": "24h"}', "input_file_id"),
        (
            b'{"input_file_id": "%s", "endpoint": "/v1/completions", "completion_window": "24h", '
            b'"metadata": {"k": 1}}' % ok["id"].encode(),
            "metadata",
        ),  # fmt: skip
    ]
    for body, param in cases:
        resp = await http.post(
            "/v1/batches", data=body, headers={"Content-Type": "application/json"}
        )
        status, err = await error_of(resp)
        assert status == 400 and err["param"] == param, (body, err)
    for query in ("limit=abc", "limit=0", "limit=101"):
        status, err = await error_of(await http.get(f"/v1/batches?{query}"))
        assert status == 400 and err["param"] == "limit"
    status, _ = await error_of(await http.get("/v1/files?order=sideways"))
    assert status == 400
    status, _ = await error_of(await http.get(f"/v1/files/{ok['id']}", headers={"x-owner": "b"}))
    assert status == 404
    status, _ = await error_of(await http.delete("/v1/batches/x"))
    assert status == 405


async def test_off_routes_say_how_to_turn_it_on(tmp_path):
    async with TestClient(TestServer(app_with(tmp_path, on=False))) as client:
        status, err = await error_of(await client.get("/v1/batches"))
        assert status == 404 and "--batch-dir" in err["message"]
