"""Fixtures for gateway tests: fake replica processes, a real Redis, a gateway on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess

import aiohttp
import pytest
from gwtools import RunningGateway, free_port, start_fakes

from herd.gateway.app import Gateway, serve
from herd.gateway.config import GatewayConfig
from waiting import wait_until


@pytest.fixture(scope="module")
def fakes3():
    """Three fake replicas shared by a test module; reset before each test."""
    fakes = start_fakes(3)
    yield fakes
    for fake in fakes:
        fake.stop()


@pytest.fixture
def fakes(fakes3):
    for fake in fakes3:
        if fake.proc.poll() is None:
            fake.reset()
    return fakes3


@pytest.fixture
async def start_gateway():
    """start_gateway(config) -> RunningGateway; all are stopped after the test."""
    running: list[RunningGateway] = []

    async def start(config: GatewayConfig, ready: int | None = None) -> RunningGateway:
        gateway = Gateway(config)
        runner = await serve(gateway, "127.0.0.1", config.port)
        session = aiohttp.ClientSession()
        gw = RunningGateway(gateway, f"http://127.0.0.1:{config.port}", runner, session)
        running.append(gw)
        await gw.wait_ready(len(config.upstreams) if ready is None else ready)
        return gw

    yield start
    for gw in running:
        await gw.session.close()
        await gw.runner.cleanup()


@pytest.fixture
def redis_url():
    """A private redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: run `bash scripts/services.sh`")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _pongs(port), 10, "redis-server answering PING")
    except AssertionError:
        proc.kill()
        raise
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait()


def _pongs(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
