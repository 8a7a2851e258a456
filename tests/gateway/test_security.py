"""API keys, admin routes, bad requests and rate limits (in memory and shared through Redis)."""

import asyncio
import json

import pytest
import yaml
from gwtools import chat, fast_config

from herd.gateway.auth import hash_key, load_keys
from herd.gateway.config import ConfigError


def write_keys(tmp_path, **limits):
    keys = [
        {
            "id": "alice",
            "sha256": hash_key("sk-alice"),
            "tenant": "a",
            "models": ["fake-model"],
            **limits,
        },
        {"id": "bob", "sha256": hash_key("sk-bob"), "tenant": "b", "models": ["other-model"]},
    ]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return str(path)


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_keys_file_refuses_plain_keys_and_bad_hashes(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text('[[keys]]\nid = "x"\nkey = "sk-plain"\n')
    with pytest.raises(ConfigError, match="sha256"):
        load_keys(path)
    path.write_text('[[keys]]\nid = "x"\nsha256 = "abc"\n')
    with pytest.raises(ConfigError, match="64 hex"):
        load_keys(path)


async def test_auth_errors_and_the_gateway_keeps_serving(fakes, start_gateway, tmp_path):
    config = fast_config(
        [f.url for f in fakes], api_keys=write_keys(tmp_path), proxy__max_body_bytes=2000
    )
    gw = await start_gateway(config)
    cases = [
        ({}, chat(), None, 401, "missing_api_key"),
        (bearer("sk-wrong"), chat(), None, 401, "invalid_api_key"),
        (bearer("sk-bob"), chat(), None, 403, "model_not_allowed"),
        (bearer("sk-alice"), None, b"{not json", 400, None),
        (bearer("sk-alice"), None, b"[1, 2]", 400, None),
        (bearer("sk-alice"), {"messages": []}, None, 400, None),
        (bearer("sk-alice"), chat("x" * 5000), None, 413, None),
    ]
    for headers, payload, data, want, code in cases:
        status, _, body = await gw.post("/v1/chat/completions", payload, headers, data=data)
        err = json.loads(body)["error"]
        assert status == want, (want, body)
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        if code:
            assert err["code"] == code
    assert sum(f.stats()["calls"] for f in fakes) == 0  # none reached a replica
    status, _, _ = await gw.post("/v1/chat/completions", chat(), bearer("sk-alice"))
    assert status == 200
    async with gw.session.get(gw.url + "/v1/models", headers=bearer("sk-bob")) as resp:
        assert (await resp.json())["data"] == []  # bob's model is not served here


async def test_admin_routes_take_the_admin_key_only(fakes, start_gateway, tmp_path):
    config = fast_config([f.url for f in fakes], api_keys=write_keys(tmp_path), admin_key="adm")
    gw = await start_gateway(config)
    for headers, want in (({}, 401), (bearer("sk-alice"), 403), (bearer("adm"), 200)):
        async with gw.session.get(gw.url + "/admin/replicas", headers=headers) as resp:
            assert resp.status == want
    async with gw.session.get(gw.url + "/admin/replicas", headers=bearer("adm")) as resp:
        replicas = (await resp.json())["replicas"]
    assert {r["url"] for r in replicas} == {f.url for f in fakes}
    assert all(r["state"] == "ready" and "in_flight" in r and "pid" in r for r in replicas)
    url = fakes[0].url
    async with gw.session.delete(
        gw.url + "/admin/replicas", params={"url": url}, headers=bearer("adm")
    ) as resp:
        assert resp.status == 200
    assert gw.gateway.replicas.get(url) is None
    async with gw.session.post(
        gw.url + "/admin/replicas", json={"url": url}, headers=bearer("adm")
    ) as resp:
        assert resp.status == 201 and (await resp.json())["state"] == "ready"
    async with gw.session.post(gw.url + "/admin/rollout", headers=bearer("adm")) as resp:
        assert resp.status == 404  # no fleet behind a lone gateway


async def test_request_limit_headers_and_retry_after(fakes, start_gateway, tmp_path):
    config = fast_config([fakes[0].url], api_keys=write_keys(tmp_path, rpm=3))
    gw = await start_gateway(config)
    statuses = []
    for _ in range(5):
        status, headers, body = await gw.post("/v1/chat/completions", chat(), bearer("sk-alice"))
        statuses.append(status)
    assert statuses == [200, 200, 200, 429, 429]
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["Retry-After"]) >= 1
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


async def test_token_limit_reserves_then_settles(fakes, start_gateway, tmp_path):
    # Each request reserves ceil(len("user:hi\n")/3) + 10 = 13 tokens and uses 1 + 10 = 11.
    config = fast_config([fakes[0].url], api_keys=write_keys(tmp_path, tpm=36))
    gw = await start_gateway(config)
    fakes[0].control(delay_s=0.3)
    req = chat("hi", max_tokens=10)
    burst = await asyncio.gather(
        *(gw.post("/v1/chat/completions", req, bearer("sk-alice")) for _ in range(4))
    )
    assert sorted(r[0] for r in burst) == [200, 200, 429, 429]  # reservations stop the burst
    limiter = gw.gateway.limiter
    window = limiter._windows["alice"]
    assert window.used == 2 * (1 + 10)  # settled to real usage: 1 prompt word + 10 tokens
    fakes[0].control(delay_s=0.0)
    assert (await gw.post("/v1/chat/completions", req, bearer("sk-alice")))[0] == 200


async def test_concurrency_limit(fakes, start_gateway, tmp_path):
    config = fast_config([fakes[0].url], api_keys=write_keys(tmp_path, concurrency=2))
    gw = await start_gateway(config)
    fakes[0].control(delay_s=0.3)
    results = await asyncio.gather(
        *(gw.post("/v1/chat/completions", chat(), bearer("sk-alice")) for _ in range(4))
    )
    assert sorted(r[0] for r in results) == [200, 200, 429, 429]
    fakes[0].control(delay_s=0.0)
    assert (await gw.post("/v1/chat/completions", chat(), bearer("sk-alice")))[0] == 200


async def test_two_gateways_share_limits_through_redis(fakes, start_gateway, tmp_path, redis_url):
    keys = write_keys(tmp_path, rpm=10, tpm=10_000)
    gws = [
        await start_gateway(fast_config([f.url for f in fakes], api_keys=keys, redis=redis_url))
        for _ in range(2)
    ]
    req = chat("hello there", max_tokens=4)
    results = await asyncio.gather(
        *(gws[i % 2].post("/v1/chat/completions", req, bearer("sk-alice")) for i in range(30))
    )
    admitted = [r for r in results if r[0] == 200]
    assert len(admitted) == 10  # exactly the limit, across both gateways
    assert sum(f.stats()["calls"] for f in fakes) == 10
    # Token limit, shared too: 2 gateways x 6 requests reserving 4 + ceil(len/3) tokens each.
    keys = write_keys(tmp_path, tpm=100)
    for gw in gws:
        gw.gateway.auth.keys = load_keys(keys)
    await gws[0].gateway.redis.flushdb()
    fakes[0].control(delay_s=0.3)
    fakes[1].control(delay_s=0.3)
    fakes[2].control(delay_s=0.3)
    big = chat("y" * 60, max_tokens=10)  # reserves ceil(len("user:yyy...\n")/3) + 10 = 32
    results = await asyncio.gather(
        *(gws[i % 2].post("/v1/chat/completions", big, bearer("sk-alice")) for i in range(12))
    )
    assert sum(r[0] == 200 for r in results) == 100 // 32
