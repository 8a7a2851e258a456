"""QoS classes: the operator's classes clamp priority and max_tokens, and order the gateway queue
by class then arrival, each class within its share of the queue."""

import asyncio
import json

import pytest
import yaml
from gwtools import chat, fast_config

from herd.gateway.auth import hash_key, load_keys
from herd.gateway.config import ConfigError, ProxyConfig
from herd.gateway.dispatch import Dispatcher
from herd.gateway.errors import GatewayError
from herd.gateway.qos import QosClass, QosClasses, apply_class, load_classes
from herd.gateway.replicas import ReplicaSet, ReplicaState
from herd.gateway.request_info import parse_request
from herd.gateway.routing import RouteRequest, make_policy
from waiting import until

CLASSES = {
    "interactive": {"priority": [-10, 0], "max_tokens": 64, "max_tokens_default": 8},
    "standard": {"priority": [0, 10], "max_tokens": 512},
    "batch": {"priority": [10, 100], "max_tokens": 4096, "queue_share": 0.5},
}


def write_keys(tmp_path, classes=CLASSES, **extra) -> str:
    keys = [
        {"id": "chat", "sha256": hash_key("sk-chat"), "class": "interactive"},
        {"id": "bulk", "sha256": hash_key("sk-bulk"), "class": "batch"},
        {"id": "plain", "sha256": hash_key("sk-plain")},
    ]
    path = tmp_path / "keys.yaml"
    data = {"classes": classes, "keys": keys, **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def info_of(payload: dict):
    return parse_request("chat/completions", json.dumps(payload).encode(), {}, 64)


def test_keys_file_classes_and_the_default_class(tmp_path):
    path = write_keys(tmp_path, default_class="standard")
    classes, keys = load_classes(path), load_keys(path)
    # Ranked by priority range, whatever order the file lists them in.
    ranks = {c.name: c.rank for c in classes.classes.values()}
    assert ranks == {"interactive": 0, "standard": 1, "batch": 2}
    by_id = {k.id: k for k in keys.values()}
    assert classes.of(by_id["bulk"].qos_class).priority == (10, 100)
    assert classes.of(by_id["plain"].qos_class).name == "standard"  # no class: the default
    assert load_classes(write_keys(tmp_path)).default.name == next(iter(CLASSES))  # first listed


@pytest.mark.parametrize(
    "classes, extra, message",
    [
        ({"a": {"priority": [5, 1]}}, {}, "empty"),
        ({"a": {"queue_share": 0}}, {}, "queue_share"),
        ({"a": {"max_tokens": 10, "max_tokens_default": 20}}, {}, "above max_tokens"),
        ({"a": {"colour": "red"}}, {}, "unknown key"),
        ({"a": {}}, {"default_class": "b"}, "default_class"),
        (CLASSES | {"interactive": {}}, {}, None),
    ],
)
def test_bad_class_tables_are_refused_naming_the_setting(tmp_path, classes, extra, message):
    path = write_keys(tmp_path, classes, **extra)
    if message is None:  # "batch" and "interactive" exist: fine
        load_classes(path)
        return
    with pytest.raises(ConfigError, match=message):
        load_classes(path)


def test_a_key_naming_an_unknown_class_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'batch' is not in"):
        load_classes(write_keys(tmp_path, {"interactive": {}}))


def test_priority_is_clamped_and_the_body_rewritten_only_when_it_must():
    batch = QosClass("batch", priority=(10, 100))
    info = info_of(chat(priority=-1000))
    apply_class(info, batch, None)
    assert json.loads(info.body)["priority"] == 10
    info = info_of(chat())  # none given: the class's nearest to the engine's default 0
    apply_class(info, batch, None)
    assert json.loads(info.body)["priority"] == 10
    untouched = info_of(chat(priority=50, max_tokens=5))
    before = untouched.body
    apply_class(untouched, batch, None)
    assert untouched.body is before and untouched.route.rank == batch.rank
    with pytest.raises(GatewayError) as bad:
        apply_class(info_of(chat(priority="high")), batch, None)
    assert bad.value.status == 400 and bad.value.param == "priority"


def test_max_tokens_default_ceiling_and_server_default():
    cls = QosClass("interactive", max_tokens=64, max_tokens_default=8)
    info = info_of(chat())
    apply_class(info, cls, 32)
    assert json.loads(info.body)["max_tokens"] == 8 and info.max_tokens == 8  # class first
    info = info_of(chat())
    apply_class(info, QosClass("s", max_tokens=64), 32)
    assert json.loads(info.body)["max_tokens"] == 32  # then the gateway's default
    info = info_of(chat())
    apply_class(info, QosClass("s", max_tokens=64), None)
    assert json.loads(info.body)["max_tokens"] == 64  # else the ceiling: never unbounded
    info = info_of(chat())
    apply_class(info, QosClass("s"), None)
    assert "max_tokens" not in json.loads(info.body)  # nothing to apply: untouched
    completion = parse_request("completions", b'{"model": "m", "prompt": "x"}', {}, 64)
    apply_class(completion, QosClass("s", max_tokens=64), None)
    assert completion.max_tokens is None  # OpenAI's 16 already stays under the ceiling
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(GatewayError) as over:
            apply_class(info_of(chat(**{field: 65})), cls, None)
        assert over.value.status == 400 and over.value.param == field
        assert "65" in over.value.message and "64" in over.value.message


async def test_gateway_forwards_the_clamped_request(fakes, start_gateway, tmp_path):
    config = fast_config([fakes[0].url], api_keys=write_keys(tmp_path), max_tokens_default=3)
    gw = await start_gateway(config)
    bulk = {"Authorization": "Bearer sk-bulk"}
    status, _, body = await gw.post("/v1/chat/completions", chat(priority=-1000), bulk)
    assert status == 200, body
    forwarded = fakes[0].stats()["last_body"]
    assert forwarded["priority"] == 10 and forwarded["max_tokens"] == 3
    assert json.loads(body)["usage"]["completion_tokens"] == 3
    chat_key = {"Authorization": "Bearer sk-chat"}
    status, _, body = await gw.post("/v1/chat/completions", chat(max_tokens=100), chat_key)
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == "max_tokens"
    assert error["code"] == "max_tokens_too_large"


async def test_anonymous_traffic_may_not_jump_the_queue(fakes, start_gateway):
    gw = await start_gateway(fast_config([fakes[0].url]))
    status, _, _ = await gw.post("/v1/chat/completions", chat(priority=-1000, max_tokens=2))
    assert status == 200
    assert fakes[0].stats()["last_body"]["priority"] == 0


def one_slot_dispatcher(**proxy) -> Dispatcher:
    d = Dispatcher(
        ReplicaSet(),
        make_policy("least_outstanding"),
        ProxyConfig(max_in_flight_per_replica=1, **proxy),
    )
    d.replicas.add("http://a", ReplicaState.READY)
    d.shares = QosClasses(
        {
            "interactive": QosClass("interactive", rank=0),
            "batch": QosClass("batch", rank=2, queue_share=0.5),
        },
        "interactive",
    ).shares()
    return d


def req(cls: str) -> RouteRequest:
    return RouteRequest("m", qos_class=cls, rank={"interactive": 0, "batch": 2}[cls])


async def test_a_freed_replica_goes_to_the_best_class_then_the_earliest():
    d = one_slot_dispatcher()
    busy = await d.acquire(req("batch"))
    order: list[str] = []

    async def wait(name: str, cls: str) -> None:
        replica = await d.acquire(req(cls))
        order.append(name)
        await asyncio.sleep(0)
        d.release(replica)

    tasks = []
    for name, cls in (
        ("b1", "batch"),
        ("b2", "batch"),
        ("i1", "interactive"),
        ("i2", "interactive"),
    ):
        tasks.append(asyncio.create_task(wait(name, cls)))
        queued = len(tasks)
        await until(lambda: d.waiting == queued, 5, "queued in arrival order")  # noqa: B023
    assert d.waiting == 4 and d.waiting_by_class() == {"interactive": 2, "batch": 2}
    d.release(busy)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["i1", "i2", "b1", "b2"]


async def test_a_newcomer_does_not_take_a_replica_a_waiter_is_owed():
    d = one_slot_dispatcher()
    busy = await d.acquire(req("batch"))
    waiter = asyncio.create_task(d.acquire(req("interactive")))
    await until(lambda: d.waiting == 1, 5, "the waiter queued")
    d.release(busy)  # freed: the waiter has not run yet
    late = asyncio.create_task(d.acquire(req("interactive")))
    got = await asyncio.wait_for(waiter, 5)
    await until(lambda: d.waiting == 1, 5, "the newcomer queued")
    assert not late.done()  # it queues behind the earlier waiter
    d.release(got)
    d.release(await asyncio.wait_for(late, 5))


async def test_each_class_waits_within_its_share_of_the_queue():
    d = one_slot_dispatcher(queue_size=4, queue_timeout_s=5)
    busy = await d.acquire(req("batch"))
    batch = [asyncio.create_task(d.acquire(req("batch"))) for _ in range(2)]
    await until(lambda: d.waiting == 2, 5, "two batch waiters")
    with pytest.raises(GatewayError) as full:
        await d.acquire(req("batch"))  # 0.5 of 4: two batch waiters at most
    assert full.value.status == 429 and "'batch' class's share" in full.value.message
    interactive = asyncio.create_task(d.acquire(req("interactive")))
    await until(lambda: d.waiting == 3, 5, "the interactive request queued")
    assert d.waiting == 3  # the interactive request still found room
    d.release(busy)
    first = await asyncio.wait_for(interactive, 5)
    d.release(first)
    for task in batch:
        d.release(await asyncio.wait_for(task, 5))


async def test_long_prompts_wait_in_a_lane_behind_every_short_one():
    interactive = QosClass("interactive", priority=(0, 9), rank=0)
    long_chat = info_of(chat(content="x" * 500))
    short_batch = info_of(chat(content="hi"))
    apply_class(long_chat, interactive, None, long_prompt_chars=100)
    apply_class(short_batch, QosClass("batch", priority=(10, 100), rank=1), None, 100)
    assert long_chat.route.rank > short_batch.route.rank  # a short batch turn goes first
    apply_class(same := info_of(chat(content="x" * 500)), interactive, None, None)
    assert same.route.rank == interactive.rank  # no threshold: one lane

    d = one_slot_dispatcher()
    busy = await d.acquire(req("batch"))
    order: list[str] = []

    async def wait(name: str, route: RouteRequest) -> None:
        replica = await d.acquire(route)
        order.append(name)
        await asyncio.sleep(0)
        d.release(replica)

    tasks = [asyncio.create_task(wait("long", long_chat.route))]
    await until(lambda: d.waiting == 1, 5, "the long prompt queued")
    tasks.append(asyncio.create_task(wait("short", short_batch.route)))
    await until(lambda: d.waiting == 2, 5, "the short prompt queued")
    d.release(busy)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["short", "long"]
