"""Failure scenarios at the gateway's front door and behind it, against fake replica processes
on loopback: a hung replica (health green, never answers) is ejected and its requests retried;
slowloris connections are closed within 10 s; 2,000 idle keep-alive connections are held while
traffic flows; lying Content-Length bodies get 400/408/413; path tricks never pass auth.
docs/reliability.md lists every scenario with its pass criterion."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from gwtools import chat, fast_config
from test_security import bearer, write_keys
from yarl import URL

from herd.gateway.config import ProxyConfig


async def test_hung_replica_is_ejected_and_its_requests_retried(fakes, start_gateway):
    config = fast_config([f.url for f in fakes], proxy__first_byte_timeout_s=0.3)
    config.health.backoff_base_s = 30.0  # stays ejected for the test: /ready keeps answering
    gw = await start_gateway(config)
    fakes[0].control(mode="hang", times=1000)  # accepts, reads, never answers; /ready stays 200
    for stream in (False, True):
        results = await asyncio.gather(
            *(gw.post("/v1/chat/completions", chat(f"q{i}", stream=stream)) for i in range(12))
        )
        assert [r[0] for r in results] == [200] * 12
    hung = gw.gateway.replicas.get(fakes[0].url)
    assert hung.state == "ejected"
    assert gw.gateway.metrics.ejections.labels(fakes[0].url)._value.get() >= 1
    calls = fakes[0].stats()["calls"]
    await gw.post("/v1/chat/completions", chat("after"))
    assert fakes[0].stats()["calls"] == calls  # an ejected replica gets nothing


async def test_slowloris_connections_are_closed_within_10s(fakes, start_gateway):
    assert ProxyConfig().head_timeout_s <= 10.0  # the default meets the criterion
    gw = await start_gateway(fast_config([fakes[0].url]))
    port = URL(gw.url).port
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    start = time.monotonic()
    for _, writer in conns:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def drip(reader, writer) -> float:
        # One header byte a second, as slowloris does, until the gateway hangs up.
        while time.monotonic() - start < 15:
            try:
                writer.write(b"X")
                await writer.drain()
                if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic() - start
        return float("inf")

    closed_after = await asyncio.gather(*(drip(r, w) for r, w in conns))
    assert max(closed_after) <= 10.0 + 1.5, max(closed_after)
    status, _, _ = await gw.post("/v1/chat/completions", chat())
    assert status == 200  # the gateway kept serving throughout
    for _, writer in conns:
        writer.close()


async def test_2000_idle_keepalive_connections_held_while_traffic_flows(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes]))
    port = URL(gw.url).port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2000)]
    results = await asyncio.gather(
        *(gw.post("/v1/chat/completions", chat(f"t{i}")) for i in range(50))
    )
    assert [r[0] for r in results] == [200] * 50
    # Every idle connection is still open and still serves a request.
    for reader, writer in idle[:: len(idle) // 20]:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    for _, writer in idle:
        writer.close()


async def raw_post(port: int, head_extra: bytes, body: bytes, wait_s: float = 5.0) -> tuple:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + head_extra + b"\r\n" + body
    )  # fmt: skip
    await writer.drain()
    try:
        raw = await asyncio.wait_for(reader.read(65536), wait_s)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    payload = raw.split(b"\r\n\r\n", 1)[1]
    return status, payload


@pytest.mark.parametrize(
    "head, body, want",
    [
        (b"Content-Length: 99999999\r\n", b"{}", 413),  # announced past the limit
        (b"Content-Length: 5\r\n", json.dumps(chat()).encode(), 400),  # shorter than sent
        (b"Content-Length: 4000\r\n", b'{"model": "fake-model"', 408),  # longer: never arrives
        (b"Content-Length: 12\r\nContent-Length: 14\r\n", b"{}", 400),  # two lengths
        (b"Transfer-Encoding: chunked\r\n", b"ffffffff\r\n{", 408),  # 4 GiB chunk, 1 byte sent
    ],
)
async def test_oversized_and_lying_content_length(fakes, start_gateway, head, body, want):
    config = fast_config([fakes[0].url], proxy__max_body_bytes=4096, proxy__body_timeout_s=1.0)
    gw = await start_gateway(config)
    status, _ = await raw_post(URL(gw.url).port, head, body)
    assert status == want
    assert fakes[0].stats()["calls"] == 0


async def test_path_and_host_tricks_never_pass_auth(fakes, start_gateway, tmp_path):
    config = fast_config([fakes[0].url], api_keys=write_keys(tmp_path), admin_key="adm")
    gw = await start_gateway(config)
    paths = ["//v1/chat/completions", "/v1//chat/completions", "/v1/../v1/chat/completions",
             "/%2e%2e/v1/chat/completions", "/v1/%2e%2e/v1/chat/completions",
             "/v1/chat/completions/", "/V1/chat/completions", "/health/../v1/chat/completions"]  # fmt: skip
    for path in paths:
        for headers in ({}, {"Host": "localhost"}, {"Host": "127.0.0.1:1"}, bearer("sk-bob")):
            async with gw.session.post(
                URL(gw.url + path, encoded=True), json=chat(), headers=headers
            ) as resp:
                assert resp.status in (401, 403, 404), (path, headers, resp.status)
                assert "error" in await resp.json()
    for path in ("/admin/replicas", "//admin/replicas", "/admin/../admin/replicas"):
        async with gw.session.get(
            URL(gw.url + path, encoded=True), headers=bearer("sk-alice")
        ) as resp:
            assert resp.status in (401, 403, 404), (path, resp.status)
    assert fakes[0].stats()["calls"] == 0
