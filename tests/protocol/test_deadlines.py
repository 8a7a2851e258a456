"""The request-head deadline on a bare aiohttp app: a partial head is closed at the deadline,
while a keep-alive connection idle between requests (longer than the deadline) is kept."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from herd.protocol.deadlines import apply_head_deadline


async def start(deadline_s: float) -> tuple[web.AppRunner, int]:
    app = web.Application()

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    apply_head_deadline(runner, deadline_s)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def test_partial_head_closed_and_keepalive_kept():
    runner, port = await start(0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - t0 < 2.0
        async with aiohttp.ClientSession() as s:
            for _ in range(6):  # 6 requests spread over more than twice the deadline
                async with s.get(f"http://127.0.0.1:{port}/") as r:
                    assert r.status == 200
                await asyncio.sleep(0.15)  # idle between requests, on purpose
            assert len(runner.server.connections) == 1  # the same connection throughout
    finally:
        await runner.cleanup()
