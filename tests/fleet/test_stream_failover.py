"""Mid-stream failover with real replicas: a replica SIGKILLed after the client got part of a
stream, and the gateway finishes it on another replica. The client's joined text equals an
uninterrupted run's (greedy and seeded), ids and usage stay consistent, and a stream whose
request cannot be resumed (stop strings) still ends with an error event."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import urllib.request

import aiohttp
import pytest
from fleettools import REPLICA_ARGS
from gwtools import fast_config
from prometheus_client.parser import text_string_to_metric_families

from herd.gateway.app import Gateway, serve
from herd.protocol.sse import SSEParser
from herd.server.launch import ReplicaProcess
from waiting import until

TOKENS = 400  # long enough that the kill lands while the replica is still generating


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory):
    """A deeper demo model: a few ms per token, so a stream is still being generated when the
    test kills its replica (the 2-layer one finishes 400 tokens before the first write)."""
    from herd.model.demo import write_demo_model

    return write_demo_model(
        tmp_path_factory.mktemp("slow-llama"), hidden_size=256, intermediate_size=1024,
        num_hidden_layers=8, head_dim=64,
    )  # fmt: skip


@pytest.fixture
def replicas(slow_model_dir, tmp_path, request):
    """Fresh replicas (a test kills some): 3 unless the test says `@pytest.mark.replicas(n)`."""
    mark = request.node.get_closest_marker("replicas")
    n = mark.args[0] if mark else 3
    procs = [
        ReplicaProcess(slow_model_dir, *REPLICA_ARGS, "--served-model-name", "tiny",
                       log_path=tmp_path / f"r{i}.log")
        for i in range(n)
    ]  # fmt: skip
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


def payload(chat: bool, **sampling) -> dict:
    body = {"model": "tiny", "max_tokens": TOKENS, "ignore_eos": True, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "Tell me a story"}]
    else:
        body["prompt"] = "Once upon a time"
    return {**body, **sampling}


def text_of(events: list, chat: bool) -> str:
    parts = []
    for e in events:
        if isinstance(e, dict):
            for c in e.get("choices", []):
                parts.append((c.get("delta") or {}).get("content") or "" if chat else c["text"])
    return "".join(parts)


async def stream_with_kill(session, url, body, gateway, pids, kill_after: int | None):
    """Read the stream; after `kill_after` content events, SIGKILL the replica serving it."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    parser, events, content = SSEParser(), [], 0
    async with session.post(url + path, json=body) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            for e in parser.feed(chunk):
                events.append(e.data if e.is_done else e.json())
                obj = events[-1]
                if isinstance(obj, dict) and any(
                    (c.get("delta") or {}).get("content") or c.get("text")
                    for c in obj.get("choices", [])
                ):
                    content += 1
                if kill_after is not None and content == kill_after:
                    busy = [r for r in gateway.replicas.all() if r.observed.in_flight]
                    assert len(busy) == 1
                    pid = pids[busy[0].url]
                    os.kill(pid, signal.SIGSTOP)  # frozen mid-stream: nothing more is sent
                    os.kill(pid, signal.SIGKILL)
                    kill_after = None
    return events


@pytest.mark.parametrize("chat", [True, False])
async def test_sigkill_mid_stream_resumes_exactly(replicas, chat):
    config = fast_config([r.url for r in replicas], policy="round_robin", cache__enabled=False)
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    pids = {r.url: r.proc.pid for r in replicas}
    try:
        await until(lambda: len(gateway.replicas.ready()) == 3, 20, "3 replicas ready")
        async with aiohttp.ClientSession() as s:
            for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 1234}):
                body = payload(chat, **sampling)
                reference = await stream_with_kill(s, url, body, gateway, pids, None)
                retries = gateway.metrics.retries._value.get()
                got = await stream_with_kill(s, url, body, gateway, pids, 6)
                assert gateway.metrics.retries._value.get() > retries, "no failover happened"
                assert got[-1] == "[DONE]" and not any("error" in e for e in got[:-1])
                assert text_of(got, chat) == text_of(reference, chat) != ""
                objs = [e for e in got if isinstance(e, dict)]
                assert len({e["id"] for e in objs}) == 1 and len({e["created"] for e in objs}) == 1
                assert all(c["index"] == 0 for e in objs for c in e["choices"])
                finishes = [c["finish_reason"] for e in objs for c in e["choices"]]
                assert [f for f in finishes if f] == ["length"]
                assert objs[-1]["usage"]["completion_tokens"] == TOKENS
                assert objs[-1]["usage"]["prompt_tokens"] == reference[-2]["usage"]["prompt_tokens"]
                assert not any("token_ids" in c for e in objs for c in e["choices"])
                assert not any("prompt_token_ids" in e for e in objs)
    finally:
        await runner.cleanup()


@pytest.mark.replicas(2)  # another replica is there: only the request forbids resuming
async def test_unresumable_stream_still_ends_with_an_error_event(replicas):
    config = fast_config([r.url for r in replicas], cache__enabled=False)
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    try:
        await until(lambda: len(gateway.replicas.ready()) == 2, 20, "2 replicas ready")
        async with aiohttp.ClientSession() as s:
            body = payload(True, temperature=0, stop=["zzzz-never"])
            got = await stream_with_kill(
                s, url, body, gateway, {r.url: r.proc.pid for r in replicas}, 4
            )
        assert "error" in got[-1]
        assert got[-1]["error"]["code"] == "replica_error"
    finally:
        await runner.cleanup()


def replica_metrics(replica) -> dict[str, float]:
    """Samples by name, the request counter by finish reason ("...:abort")."""
    with urllib.request.urlopen(replica.url + "/metrics") as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            reason = sample.labels.get("finish_reason")
            out[sample.name + (f":{reason}" if reason else "")] = sample.value
    return out


async def replica_idle_aborts(replica) -> tuple[float] | None:
    """(aborted requests so far,) once nothing runs and no KV block is held; else None."""
    m = await asyncio.to_thread(replica_metrics, replica)
    idle = m.get("herd_num_requests_running") == 0 and m.get("herd_kv_cache_usage_ratio") == 0
    return (m.get("herd_request_success_total:abort", 0.0),) if idle else None


@pytest.mark.replicas(1)
async def test_client_gone_or_not_reading_frees_the_replicas_blocks(replicas):
    replica = replicas[0]
    config = fast_config([replica.url], cache__enabled=False, proxy__client_write_timeout_s=1.0)
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    try:
        await until(lambda: gateway.replicas.ready(), 20, "replica ready")
        (before,) = await until(lambda: replica_idle_aborts(replica), 20, "replica idle")
        # 1. The client goes away mid-stream.
        async with aiohttp.ClientSession() as s:
            resp = await s.post(url + "/v1/completions", json=payload(False, max_tokens=900))
            await resp.content.readline()
            resp.close()
        await until(
            lambda: _aborts_reached(replica, before + 1), 30, "disconnect aborted on the replica"
        )
        # 2. The client keeps its connection but stops reading: the gateway's writes block, it
        # gives up after client_write_timeout_s and the replica aborts (blocks freed) while the
        # client is still connected. Big events (top logprobs) fill the socket buffers fast.
        body = payload(True, max_tokens=900, logprobs=True, top_logprobs=20, n=8)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", config.port))
        data = json.dumps(body).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )  # fmt: skip
        try:
            await until(lambda: _aborts_reached(replica, before + 2), 60, "stalled client aborted")
        finally:
            sock.close()
    finally:
        await runner.cleanup()


async def _aborts_reached(replica, want: float) -> bool:
    got = await replica_idle_aborts(replica)
    return got is not None and got[0] >= want
