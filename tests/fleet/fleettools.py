"""Load generators for fleet tests: keep requests flowing and record every status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from gwtools import sse_events

# Flags every test replica gets: the tiny model in float32 on CPU, quiet, short drains.
REPLICA_ARGS = [
    "--dtype",
    "float32",
    "--device",
    "cpu",
    "--log-level",
    "warning",
    "--max-model-len",
    "1024",
    "--drain-timeout",
    "20",
]


@dataclass
class Load:
    """`concurrency` workers posting `payload` until stopped; every answer's status is kept."""

    session: aiohttp.ClientSession
    url: str
    payload: dict
    concurrency: int = 6
    pause_s: float = 0.0  # between one worker's requests: load that leaves CPU to the rest
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        return self

    async def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.session.post(self.url, json=self.payload) as resp:
                    body = await resp.read()
                    self.statuses.append(resp.status)
            except aiohttp.ClientError as exc:
                body = repr(exc).encode()
                self.statuses.append(-1)
            if self.statuses[-1] != 200:
                self.bodies.append(body)
            if self.pause_s:
                await asyncio.sleep(self.pause_s)  # pacing, not synchronisation

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 60)
        return self.statuses

    def failures(self) -> list:
        return [s for s in self.statuses if s != 200]


async def read_stream(session: aiohttp.ClientSession, url: str, payload: dict) -> list:
    async with session.post(url, json={**payload, "stream": True}) as resp:
        assert resp.status == 200, await resp.read()
        return sse_events(await resp.read())


def stream_end(events: list) -> str:
    """How a stream ended: "done", "error", or "truncated" (the bug we guard against)."""
    if events and events[-1] == "[DONE]":
        return "done"
    if events and isinstance(events[-1], dict) and "error" in events[-1]:
        return "error"
    return "truncated"
