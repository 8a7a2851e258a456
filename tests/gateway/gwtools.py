"""Helpers shared by gateway and fleet tests: fake replica processes, config, SSE parsing."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from herd.fleet.supervisor import free_port as _free_port
from herd.gateway.app import Gateway
from herd.gateway.config import GatewayConfig
from herd.protocol.sse import SSEParser
from waiting import until, wait_until


def free_port() -> int:
    return _free_port("127.0.0.1")


FAKE = Path(__file__).with_name("fake_upstream.py")


def _http(method: str, url: str, data: dict | None = None, timeout: float = 2.0):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class FakeUpstream:
    name: str
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, **settings) -> None:
        _http("POST", self.url + "/control", settings)

    def reset(self) -> None:
        self.control(mode="ok", times=0, delay_s=0.0, token_delay_s=0.0, ready=True, calls=0)

    def stats(self) -> dict:
        return _http("GET", self.url + "/stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_fakes(n: int, metrics: str = "herd", prefix: str = "fake") -> list[FakeUpstream]:
    fakes = []
    for i in range(n):
        port = free_port()
        cmd = [
            sys.executable,
            str(FAKE),
            "--port",
            str(port),
            "--name",
            f"{prefix}{i}",
            "--metrics",
            metrics,
        ]
        fakes.append(FakeUpstream(f"{prefix}{i}", port, subprocess.Popen(cmd)))
    for fake in fakes:
        wait_until(lambda f=fake: _answers(f), 20, f"fake upstream {fake.name} answering")
    return fakes


def _answers(fake: FakeUpstream) -> bool:
    assert fake.proc.poll() is None, f"fake upstream {fake.name} exited"
    try:
        _http("GET", fake.url + "/health", timeout=0.5)
        return True
    except OSError:
        return False


def fast_config(upstreams: list[str], **overrides) -> GatewayConfig:
    """Short timers so health changes and failovers show within a test's patience."""
    config = GatewayConfig(port=free_port(), upstreams=upstreams)
    config.health.interval_s = 0.1
    config.health.timeout_s = 1.0
    config.health.backoff_base_s = 0.2
    config.proxy.queue_timeout_s = 2.0
    for name, value in overrides.items():
        target, _, attr = name.rpartition("__")
        setattr(getattr(config, target) if target else config, attr, value)
    return config


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    runner: object
    session: aiohttp.ClientSession
    extra: list = field(default_factory=list)

    async def wait_ready(self, n: int, timeout: float = 10.0) -> None:
        await until(lambda: len(self.gateway.replicas.ready()) >= n, timeout, "replicas ready")

    async def post(self, path: str, payload=None, headers=None, data=None):
        """POST and read the whole answer: (status, headers, body bytes)."""
        async with self.session.post(
            self.url + path,
            json=payload if data is None else None,
            data=data,
            headers=headers or {},
        ) as resp:
            return resp.status, resp.headers, await resp.read()


def chat(content: str = "hello", **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(body: bytes) -> list:
    """Parsed `data:` payloads of an SSE body; "[DONE]" stays a string."""
    parser = SSEParser()
    events = parser.feed(body) + parser.close()
    return [e.data if e.is_done else e.json() for e in events if e.data is not None]
