"""Abuse controls: token budgets per day / month (429 naming the budget and its reset), anonymous
traffic limited per client address, and a deny list that reaches every gateway through Redis."""

import datetime as dt
import json
import time

import yaml
from gwtools import chat, fast_config

from herd.gateway.auth import ApiKey, hash_key
from herd.gateway.budgets import Budgets, Period
from waiting import until

ADMIN = {"Authorization": "Bearer adm"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def write_keys(tmp_path, **budget) -> str:
    keys = [
        {"id": "alice", "sha256": hash_key("sk-alice"), **budget},
        {"id": "bob", "sha256": hash_key("sk-bob")},
    ]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": keys}))
    return str(path)


def test_periods_reset_at_the_next_utc_day_and_month():
    now = dt.datetime(2026, 12, 31, 17, 5, tzinfo=dt.UTC)
    day, month = Period.of("day", now), Period.of("month", now)
    assert (day.id, day.resets_at) == ("2026-12-31", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    assert (month.id, month.resets_at) == ("2026-12", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    feb = Period.of("month", dt.datetime(2028, 2, 29, tzinfo=dt.UTC))
    assert feb.resets_at == dt.datetime(2028, 3, 1, tzinfo=dt.UTC)


async def test_budget_counts_per_period_and_starts_again_after_reset():
    budgets, key = Budgets(), ApiKey("k", "t", tokens_per_day=100)
    today = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)
    await budgets.spend(key, 60, today)
    assert await budgets.check(key, today) is None
    await budgets.spend(key, 40, today)
    over = await budgets.check(key, today)
    assert over is not None and "daily token budget of 100 tokens" in over.message
    assert "2026-11-29T00:00:00Z" in over.message and over.retry_after_s(today) == 12 * 3600
    assert await budgets.check(key, today + dt.timedelta(days=1)) is None


async def test_spent_budget_is_a_429_naming_it(fakes, start_gateway, tmp_path):
    gw = await start_gateway(
        fast_config([fakes[0].url], api_keys=write_keys(tmp_path, tokens_per_month=25))
    )
    req = chat("hi", max_tokens=10)  # 1 prompt word + 10 tokens = 11 per request
    statuses = [
        (await gw.post("/v1/chat/completions", req, bearer("sk-alice")))[0] for _ in range(3)
    ]
    assert statuses == [200, 200, 200]  # 0, 11, 22 used before each: under 25
    status, headers, body = await gw.post("/v1/chat/completions", req, bearer("sk-alice"))
    error = json.loads(body)["error"]
    assert status == 429 and error["code"] == "budget_exceeded"
    assert (
        "monthly token budget of 25 tokens" in error["message"] and "resets at" in error["message"]
    )
    assert int(headers["Retry-After"]) > 0
    assert (await gw.post("/v1/chat/completions", req, bearer("sk-bob")))[0] == 200  # others fine


async def test_budgets_are_shared_through_redis(fakes, start_gateway, tmp_path, redis_url):
    keys = write_keys(tmp_path, tokens_per_day=30)
    gws = [
        await start_gateway(fast_config([fakes[0].url], api_keys=keys, redis=redis_url))
        for _ in range(2)
    ]
    req = chat("hi", max_tokens=10)
    statuses = [
        (await gws[i % 2].post("/v1/chat/completions", req, bearer("sk-alice")))[0]
        for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # 0, 11, 22 then 33 >= 30, across both gateways


async def test_anonymous_traffic_is_limited_per_address(fakes, start_gateway):
    gw = await start_gateway(fast_config([fakes[0].url], anonymous__rpm=2))
    statuses = [(await gw.post("/v1/chat/completions", chat()))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    _, _, body = await gw.post("/v1/chat/completions", chat())
    assert "address 127.0.0.1" in json.loads(body)["error"]["message"]
    # Only the loopback address was counted: another address has its own window.
    assert set(gw.gateway.limiter._windows) == {"anonymous@127.0.0.1"}


async def test_deny_list_reaches_every_gateway_within_a_second(
    fakes, start_gateway, tmp_path, redis_url
):
    keys = write_keys(tmp_path)
    gws = [
        await start_gateway(
            fast_config([fakes[0].url], api_keys=keys, redis=redis_url, admin_key="adm")
        )
        for _ in range(2)
    ]
    first, second = gws
    assert (await second.post("/v1/chat/completions", chat(), bearer("sk-alice")))[0] == 200
    status, _, body = await first.post("/admin/deny", {"key": "alice"}, ADMIN)
    assert status == 201 and json.loads(body)["keys"] == ["alice"]
    changed = time.monotonic()

    async def refused_on_second() -> bool:
        status, _, body = await second.post("/v1/chat/completions", chat(), bearer("sk-alice"))
        return status == 403 and json.loads(body)["error"]["code"] == "key_denied"

    await until(refused_on_second, 5, "the deny reaching the second gateway")
    assert time.monotonic() - changed <= 1.0
    assert (await second.post("/v1/chat/completions", chat(), bearer("sk-bob")))[0] == 200
    # Addresses and networks too; then removal, again everywhere.
    status, _, _ = await second.post("/admin/deny", {"address": "127.0.0.0/8"}, ADMIN)
    assert status == 201
    await until(refused_on_first_by_address(first), 5, "the address deny on the first")
    async with first.session.delete(
        first.url + "/admin/deny?address=127.0.0.0/8", headers=ADMIN
    ) as r:
        assert r.status == 200
    async with first.session.delete(first.url + "/admin/deny?key=alice", headers=ADMIN) as r:
        assert r.status == 200 and (await r.json()) == {"keys": [], "addresses": []}

    async def served_on_second() -> bool:
        status, _, _ = await second.post("/v1/chat/completions", chat(), bearer("sk-alice"))
        return status == 200

    await until(served_on_second, 5, "the removal reaching the second gateway")


def refused_on_first_by_address(gw):
    async def check() -> bool:
        status, _, body = await gw.post("/v1/chat/completions", chat(), bearer("sk-bob"))
        return status == 403 and json.loads(body)["error"]["code"] == "address_denied"

    return check


async def test_deny_routes_are_admin_only_and_check_their_input(fakes, start_gateway, tmp_path):
    config = fast_config([fakes[0].url], api_keys=write_keys(tmp_path), admin_key="adm")
    gw = await start_gateway(config)
    assert (await gw.post("/admin/deny", {"key": "bob"}, bearer("sk-alice")))[0] == 403
    status, _, body = await gw.post("/admin/deny", {"address": "not-an-ip"}, ADMIN)
    assert status == 400 and json.loads(body)["error"]["param"] == "address"
    assert (await gw.post("/admin/deny", {"key": "a", "address": "1.2.3.4"}, ADMIN))[0] == 400
    # Without Redis the list is this gateway's own, and works the same.
    assert (await gw.post("/admin/deny", {"key": "bob"}, ADMIN))[0] == 201
    status, _, body = await gw.post("/v1/chat/completions", chat(), bearer("sk-bob"))
    assert status == 403 and json.loads(body)["error"]["code"] == "key_denied"
