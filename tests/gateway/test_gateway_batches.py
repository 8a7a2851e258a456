"""The Batch API through the gateway, with the official `openai` client (async: the gateway runs
in this event loop) over fake replicas: lines spread over the replicas at the batch class's
least urgent priority, batches and files owned by the creating key's tenant (another tenant
gets 404, no key 401), and a gateway restarted mid-batch finishes it without losing a line."""

import io
import json

import openai
import pytest
import yaml
from gwtools import fast_config

from herd.batch.objects import BATCH_PRIORITY
from herd.gateway.app import Gateway, serve
from herd.gateway.auth import hash_key
from waiting import until

CLASSES = {"standard": {"priority": [0, 10]}, "batch": {"priority": [50, 100]}}
KEYS = [
    {"id": "alice", "sha256": hash_key("sk-alice"), "tenant": "acme"},
    {"id": "bob", "sha256": hash_key("sk-bob"), "tenant": "globex"},
]


def keys_file(tmp_path, classes: bool = True) -> str:
    path = tmp_path / "keys.yaml"
    data = {"classes": CLASSES, "keys": KEYS} if classes else {"keys": KEYS}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def jsonl(n: int) -> bytes:
    lines = []
    for i in range(n):
        body = {"model": "fake-model", "messages": [{"role": "user", "content": f"q{i}"}]}
        body["max_tokens"] = 3
        lines.append(
            {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def client(url: str, key: str | None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key or "", max_retries=0)


async def create(c: openai.AsyncOpenAI, n: int):
    f = await c.files.create(file=("in.jsonl", io.BytesIO(jsonl(n))), purpose="batch")
    return await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def finished(c: openai.AsyncOpenAI, batch_id: str):
    b = await c.batches.retrieve(batch_id)
    return b if b.status in ("completed", "failed", "cancelled", "expired") else None


async def output(c: openai.AsyncOpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in (await c.files.content(file_id)).text.splitlines()]


def config_for(fakes, tmp_path, classes: bool = True, **overrides):
    return fast_config(
        [f.url for f in fakes],
        api_keys=keys_file(tmp_path, classes),
        batch_dir=str(tmp_path / "batches"),
        **overrides,
    )


async def test_batches_spread_over_replicas_and_stay_with_their_tenant(
    fakes, start_gateway, tmp_path
):
    gw = await start_gateway(config_for(fakes, tmp_path))
    alice, bob = client(gw.url, "sk-alice"), client(gw.url, "sk-bob")
    batch = await create(alice, 12)
    done = await until(lambda: finished(alice, batch.id), 30, "batch finished")
    assert done.status == "completed" and done.request_counts.completed == 12
    out = await output(alice, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"c{i}" for i in range(12))
    served_by = {o["response"]["body"]["system_fingerprint"] for o in out}
    assert len(served_by) >= 2  # least_outstanding spreads the lines
    assert {f.stats()["last_body"]["priority"] for f in fakes if f.stats()["calls"]} == {100}
    for call in (
        bob.batches.retrieve(batch.id),
        bob.batches.cancel(batch.id),
        bob.files.retrieve(batch.input_file_id),
        bob.files.content(done.output_file_id),
        bob.files.delete(batch.input_file_id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert [b.id async for b in bob.batches.list()] == []
    assert [b.id async for b in alice.batches.list()] == [batch.id]
    with pytest.raises(openai.AuthenticationError):
        await client(gw.url, "sk-nobody").batches.list()


async def test_a_restarted_gateway_finishes_the_batch(fakes, tmp_path):
    for fake in fakes:
        fake.control(delay_s=0.2)
    config = config_for(fakes, tmp_path, classes=False, batch_concurrency=2)
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    alice = client(url, "sk-alice")
    try:
        await until(lambda: gateway.replicas.ready(), 10, "replicas ready")
        batch = await create(alice, 10)
        await until(lambda: _completed(alice, batch.id, 3), 30, "3 lines done before the restart")
    finally:
        await runner.cleanup()  # lines in flight are cut off, not recorded
    before = sum(f.stats()["calls"] for f in fakes)
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    try:
        done = await until(lambda: finished(alice, batch.id), 30, "batch finished")
        assert done.status == "completed" and done.request_counts.completed == 10
        out = await output(alice, done.output_file_id)
        assert sorted(o["custom_id"] for o in out) == sorted(f"c{i}" for i in range(10))
        calls = sum(f.stats()["calls"] for f in fakes)
        # none lost; at most the 2 lines cut off in flight ran twice
        assert 10 <= calls <= 12 and calls > before
        # no `batch` class declared: lines run after every class
        assert {f.stats()["last_body"]["priority"] for f in fakes if f.stats()["calls"]} == {
            BATCH_PRIORITY
        }
    finally:
        await runner.cleanup()


async def _completed(c: openai.AsyncOpenAI, batch_id: str, n: int) -> bool:
    return (await c.batches.retrieve(batch_id)).request_counts.completed >= n


async def test_a_spent_token_budget_pauses_the_batch(fakes, start_gateway, tmp_path):
    config = config_for(fakes, tmp_path, batch_concurrency=1)
    path = tmp_path / "budget-keys.yaml"
    keys = [{**KEYS[0], "tokens_per_day": 1}]
    path.write_text(yaml.safe_dump({"classes": CLASSES, "keys": keys}, sort_keys=False))
    config.api_keys = str(path)
    gw = await start_gateway(config)
    alice = client(gw.url, "sk-alice")
    batch = await create(alice, 4)
    refused = gw.gateway.metrics.requests.labels("none", "429", "alice")
    await until(lambda: refused._value.get() >= 1, 10, "a line refused by the budget")
    # the first line spent the budget; the rest wait (retried), neither sent nor failed
    b = await alice.batches.retrieve(batch.id)
    assert (b.status, b.request_counts.completed, b.request_counts.failed) == ("in_progress", 1, 0)
    assert sum(f.stats()["calls"] for f in fakes) == 1
