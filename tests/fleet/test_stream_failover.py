"""Mid-stream failover with real replicas: a replica SIGKILLed after the client got part of a
stream, and the gateway finishes it on another replica. The client's joined text equals an
uninterrupted run's (greedy and seeded), ids and usage stay consistent, and a stream whose
request cannot be resumed (stop strings) still ends with an error event."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest
from fleettools import REPLICA_ARGS
from gwtools import fast_config

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
def replicas(slow_model_dir, tmp_path):
    procs = [
        ReplicaProcess(slow_model_dir, *REPLICA_ARGS, "--served-model-name", "tiny",
                       log_path=tmp_path / f"r{i}.log")
        for i in range(3)
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


async def test_unresumable_stream_still_ends_with_an_error_event(replicas):
    config = fast_config([r.url for r in replicas])
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    try:
        await until(lambda: len(gateway.replicas.ready()) == 3, 20, "3 replicas ready")
        async with aiohttp.ClientSession() as s:
            body = payload(True, temperature=0, stop=["zzzz-never"])
            got = await stream_with_kill(
                s, url, body, gateway, {r.url: r.proc.pid for r in replicas}, 4
            )
        assert "error" in got[-1]
        assert got[-1]["error"]["code"] == "replica_error"
        await asyncio.sleep(0)
    finally:
        await runner.cleanup()
