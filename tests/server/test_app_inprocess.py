"""The app over a fake engine, in-process: response shapes, streaming, errors, admission, drain,
metrics and disconnect-abort, fast. Real-engine behaviour is in test_replica.py."""

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from server_fake_engine import FakeEngine

from herd.engine.config import EngineConfig
from herd.server.app import ADMISSION, STATE, create_app
from herd.server.async_engine import AsyncEngine
from herd.server.config import ServerConfig
from waiting import until

MODEL = "fake-model"


async def _client(**overrides) -> tuple[TestClient, AsyncEngine, FakeEngine]:
    step_s = overrides.pop("step_s", 0.001)
    fake = FakeEngine(step_s=step_s)
    engine = AsyncEngine(lambda: fake)
    config = ServerConfig(EngineConfig(model=f"/models/{MODEL}"), **overrides)
    app = create_app(engine, config)
    await engine.start()
    app[STATE].phase = "ready"
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, engine, fake


@pytest.fixture
async def client():
    c, engine, _ = await _client()
    yield c
    await c.close()
    await engine.stop()


async def _error(resp, status: int, param=None) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


async def _sse(resp) -> list:
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in (await resp.text()).split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_completion_shape_and_usage(client):
    resp = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3}
    )
    body = await resp.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["choices"][0]["text"] == "abc" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_chat_stream_with_usage_and_token_ids(client):
    resp = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "yo"}],
            "max_tokens": 4,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        },
        headers={"X-Request-Id": "abc-123"},
    )
    assert resp.headers["X-Request-Id"] == "abc-123"
    chunks = await _sse(resp)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "prompt_token_ids" in chunks[0] and all("prompt_token_ids" not in c for c in chunks[1:])
    text = {0: "", 1: ""}
    ids = {0: [], 1: []}
    for c in chunks[1:-1]:
        for ch in c["choices"]:
            text[ch["index"]] += ch["delta"].get("content", "")
            ids[ch["index"]] += ch["token_ids"]
    assert text == {0: "abcd", 1: "bcde"}
    assert ids[0] == [2 + ord(x) for x in "abcd"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


async def test_completion_logprobs_and_echo(client):
    resp = await client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "logprobs": 1}
    )
    lp = (await resp.json())["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "b"] and lp["token_logprobs"] == [-0.5, -0.5]
    assert lp["top_logprobs"] == [{"a": -0.5}, {"b": -0.5}] and lp["text_offset"] == [0, 1]
    resp = await client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "echo": True}
    )
    assert (await resp.json())["choices"][0]["text"] == "hiab"


async def test_chat_logprobs(client):
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 2,
    }
    resp = await client.post("/v1/chat/completions", json=body)
    content = (await resp.json())["choices"][0]["logprobs"]["content"]
    assert content[0]["token"] == "a" and [t["token"] for t in content[0]["top_logprobs"]] == [
        "a",
        "b",
    ]


async def test_models_health_ready(client):
    models = await (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == MODEL
    assert (await client.get("/health")).status == 200
    assert (await client.get("/ready")).status == 200


async def test_error_cases(client):
    post = client.post
    await _error(await post("/v1/completions", data=b"{not json"), 400)
    await _error(await post("/v1/completions", data=b'{"prompt": "\xff\xfe"}'), 400)
    await _error(
        await post("/v1/completions", json={"prompt": "x", "max_tokens": -1}), 400, "max_tokens"
    )
    await _error(await post("/v1/completions", json={"prompt": "x", "n": 10**9}), 400, "n")
    await _error(await post("/v1/completions", json={"prompt": 5}), 400, "prompt")
    await _error(await post("/v1/completions", json={"prompt": "x", "model": "nope"}), 404, "model")
    await _error(await client.get("/v1/nothing"), 404)
    await _error(await client.get("/v1/completions"), 405)
    await _error(await post("/v1/completions", data=b"x" * (9 << 20)), 413)
    err = await _error(await post("/v1/completions", json={"prompt": "y" * 200}), 400, "prompt")
    assert "128" in err["message"] and "201" in err["message"]  # the numbers
    err = await _error(await post("/v1/completions", json={"prompt": "y", "max_tokens": 200}), 400)
    assert "128" in err["message"] and "202" in err["message"]
    await _error(
        await post("/v1/completions", json={"prompt": [999]}), 400, "prompt"
    )  # engine's refusal
    stream = await post("/v1/completions", json={"prompt": [999], "stream": True})
    await _error(stream, 400, "prompt")  # refused before the 200 goes out
    # and the replica still serves
    ok = await post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert ok.status == 200


async def test_defaulted_max_tokens_is_clamped_to_context(client):
    resp = await client.post("/v1/completions", json={"prompt": "y" * 120})  # 121 tokens + 16 > 128
    body = await resp.json()
    assert resp.status == 200 and body["usage"]["completion_tokens"] == 7


async def test_admission_bound_gives_429_with_retry_after():
    client, engine, _ = await _client(max_queued_requests=0)
    try:
        resp = await client.post("/v1/completions", json={"prompt": "x"})
        await _error(resp, 429)
        assert resp.headers["Retry-After"] == "1"
    finally:
        await client.close()
        await engine.stop()


async def test_draining_refuses_new_requests_with_503(client):
    client.app[STATE].phase = "draining"
    assert (await client.get("/ready")).status == 503
    assert (await client.get("/health")).status == 200
    resp = await client.post("/v1/completions", json={"prompt": "x"})
    await _error(resp, 503)
    assert "Retry-After" in resp.headers


async def test_disconnect_aborts_and_frees_blocks():
    client, engine, fake = await _client(step_s=0.01)
    try:
        resp = await client.post(
            "/v1/completions", json={"prompt": "x", "max_tokens": 100, "stream": True}
        )
        await resp.content.readline()
        assert fake.requests
        resp.close()  # drop the connection mid-stream
        await until(
            lambda: not fake.requests and client.app[ADMISSION].in_flight == 0, 5, "the abort"
        )
        assert engine.stats["num_free_blocks"] == fake.total_blocks
    finally:
        await client.close()
        await engine.stop()


async def test_metrics_parse_and_count(client):
    for _ in range(3):
        await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4})
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("herd_prompt_tokens_total", ())] == 9
    assert samples[("herd_generation_tokens_total", ())] == 12
    assert samples[("herd_request_success_total", (("finish_reason", "length"),))] == 3
    assert samples[("herd_time_to_first_token_seconds_count", ())] == 3
    assert samples[("herd_e2e_request_latency_seconds_count", ())] == 3
    assert samples[("herd_inter_token_latency_seconds_count", ())] == 9
    assert samples[("herd_request_queue_time_seconds_count", ())] == 3
    for name in (
        "herd_num_requests_running",
        "herd_num_requests_waiting",
        "herd_kv_cache_usage_ratio",
    ):
        assert (name, ()) in samples
    for name in (
        "herd_prefix_cache_queries_total",
        "herd_prefix_cache_hits_total",
        "herd_preemptions_total",
    ):
        assert (name, ()) in samples


async def test_continuous_usage_counts_every_chunk(client):
    resp = await client.post(
        "/v1/completions",
        json={
            "prompt": "hey",
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    chunks = await _sse(resp)
    done = [c["usage"]["completion_tokens"] for c in chunks]
    assert done == [1, 2, 3, 4, 4]  # one token per chunk, then the usage chunk
    assert {c["usage"]["prompt_tokens"] for c in chunks} == {4}  # the fake: BOS + a byte each
    # without include_usage the extension does nothing (as in vLLM)
    resp = await client.post(
        "/v1/completions",
        json={
            "prompt": "hey",
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"continuous_usage_stats": True},
        },
    )
    assert all("usage" not in c for c in await _sse(resp))


async def test_echo_of_token_ids_decodes_them(client):
    for stream in (False, True):
        resp = await client.post(
            "/v1/completions",
            json={"prompt": [106, 107], "max_tokens": 2, "echo": True, "stream": stream},
        )
        if stream:
            text = "".join(c["choices"][0]["text"] for c in await _sse(resp))
        else:
            text = (await resp.json())["choices"][0]["text"]
        assert text.startswith("hi")  # the fake tokenizer: id = byte + 2


async def test_openapi_document_describes_this_replica(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/metrics"} <= set(
        doc["paths"]
    )
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert props["model"]["anyOf"][0] == {"enum": [MODEL]}
    assert props["max_tokens"]["anyOf"][0]["maximum"] == 127  # the fake's context is 128


async def test_refusals_are_counted_by_status_and_reason(client):
    resp = await client.put("/v1/completions", json={})
    await _error(resp, 405)
    assert "POST" in resp.headers["Allow"]
    await _error(await client.get("/nope"), 404)
    await _error(await client.post("/v1/completions", json={"prompt": "x", "best": 1}), 400)
    await _error(await client.post("/v1/completions", json={"prompt": "x", "model": "m"}), 404)
    text = await (await client.get("/metrics")).text()
    counted = {
        (s.labels["status"], s.labels["reason"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "herd_rejected_requests_total"
    }
    assert counted == {
        ("405", "method_not_allowed"): 1,
        ("404", "not_found"): 1,
        ("400", "unknown_parameter"): 1,
        ("404", "model_not_found"): 1,
    }
