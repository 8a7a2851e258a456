"""Response cache: deterministic requests only, per tenant, bounded, replayed as streams."""

import json

import yaml
from gwtools import chat, fast_config, sse_events

from herd.gateway.auth import hash_key
from herd.gateway.cache import ResponseCache
from herd.gateway.config import CacheConfig
from herd.gateway.request_info import parse_request


def two_tenants(tmp_path):
    keys = [
        {"id": "a", "sha256": hash_key("ka"), "tenant": "A"},
        {"id": "b", "sha256": hash_key("kb"), "tenant": "B"},
    ]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return str(path)


A = {"Authorization": "Bearer ka"}
B = {"Authorization": "Bearer kb"}


async def test_deterministic_hits_sampled_never_tenants_apart(fakes, start_gateway, tmp_path):
    gw = await start_gateway(fast_config([fakes[0].url], api_keys=two_tenants(tmp_path)))
    greedy = chat("cache me", temperature=0)
    s1, h1, b1 = await gw.post("/v1/chat/completions", greedy, A)
    s2, h2, b2 = await gw.post("/v1/chat/completions", greedy, A)
    assert (s1, s2) == (200, 200) and h1["x-herd-cache"] == "miss" and h2["x-herd-cache"] == "hit"
    assert json.loads(b1)["choices"] == json.loads(b2)["choices"]
    assert fakes[0].stats()["calls"] == 1  # the replica was not called the second time
    # Another tenant with the very same request goes to the replica.
    s3, h3, _ = await gw.post("/v1/chat/completions", greedy, B)
    assert h3["x-herd-cache"] == "miss" and fakes[0].stats()["calls"] == 2
    # Sampled requests are never cached; a seed makes one reproducible.
    for _ in range(2):
        _, h, _ = await gw.post("/v1/chat/completions", chat("cache me", temperature=0.7), A)
        assert "x-herd-cache" not in h
    assert fakes[0].stats()["calls"] == 4
    seeded = chat("cache me", temperature=0.7, seed=3)
    await gw.post("/v1/chat/completions", seeded, A)
    assert (await gw.post("/v1/chat/completions", seeded, A))[1]["x-herd-cache"] == "hit"
    # The bypass header skips the cache.
    _, h, _ = await gw.post("/v1/chat/completions", greedy, {**A, "x-herd-cache": "bypass"})
    assert h["x-herd-cache"] == "bypass" and fakes[0].stats()["calls"] == 6


async def test_streaming_client_gets_the_cached_answer_as_a_stream(fakes, start_gateway):
    gw = await start_gateway(fast_config([fakes[0].url]))
    req = {"model": "fake-model", "prompt": "abc", "temperature": 0, "max_tokens": 4}
    _, _, plain = await gw.post("/v1/completions", req)
    status, headers, body = await gw.post("/v1/completions", {**req, "stream": True})
    assert status == 200 and headers["x-herd-cache"] == "hit"
    assert headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["text"] == json.loads(plain)["choices"][0]["text"]
    # And a streamed answer is cached for plain clients.
    chat_req = chat("streamed first", temperature=0, stream=True)
    _, _, streamed = await gw.post("/v1/chat/completions", chat_req)
    _, h, plain = await gw.post("/v1/chat/completions", {**chat_req, "stream": False})
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(streamed)[:-1])
    assert h["x-herd-cache"] == "hit"
    assert json.loads(plain)["choices"][0]["message"]["content"] == text
    assert fakes[0].stats()["calls"] == 2


async def test_lru_bound_and_ttl():
    cache = ResponseCache(CacheConfig(max_entries=3, ttl_s=60))
    info = [
        parse_request(
            "completions",
            json.dumps({"model": "m", "prompt": f"p{i}", "temperature": 0}).encode(),
            {},
            64,
        )
        for i in range(5)
    ]
    keys = [cache.key_for("t", i) for i in info]
    for k in keys:
        await cache.put(k, {"choices": []})
    assert len(cache) == 3
    assert await cache.get(keys[0]) is None and await cache.get(keys[4]) is not None
    cache.config.ttl_s = -1
    await cache.put(keys[0], {"choices": []})
    assert await cache.get(keys[0]) is None  # expired


async def test_redis_cache_is_shared_between_gateways(fakes, start_gateway, redis_url):
    gws = [await start_gateway(fast_config([fakes[0].url], redis=redis_url)) for _ in range(2)]
    req = chat("shared", temperature=0)
    await gws[0].post("/v1/chat/completions", req)
    _, h, _ = await gws[1].post("/v1/chat/completions", req)
    assert h["x-herd-cache"] == "hit" and fakes[0].stats()["calls"] == 1
