"""Content policy: deny patterns and a per-class prompt size on the way in, and answers checked
on the way out (streams as they flow) ending with finish_reason content_filter, audited; an
OpenAI-compatible moderation endpoint as the classifier."""

import json

import pytest
import yaml
from aiohttp import web
from gwtools import chat, fast_config, free_port, sse_events

from herd.gateway.auth import hash_key
from waiting import until

FOUR_TOKENS = r"(t\d+ ){3}t\d+"  # the fake replica's answer " t1 t2 t3 ..." matches at token 4


def keys_with_classes(tmp_path) -> str:
    path = tmp_path / "keys.yaml"
    data = {
        "classes": {"small": {"max_prompt_chars": 40}},
        "keys": [{"id": "k", "sha256": hash_key("sk-k")}],
    }
    path.write_text(yaml.safe_dump(data))
    return str(path)


async def test_prompts_are_refused_by_pattern_and_by_class_size(fakes, start_gateway, tmp_path):
    config = fast_config(
        [fakes[0].url],
        api_keys=keys_with_classes(tmp_path),
        content_policy__deny_patterns=[r"\bsecret plan\b"],
    )
    gw = await start_gateway(config)
    auth = {"Authorization": "Bearer sk-k"}
    status, _, body = await gw.post("/v1/chat/completions", chat("the SECRET PLAN is"), auth)
    assert status == 400 and json.loads(body)["error"]["code"] == "content_filter"
    status, _, body = await gw.post("/v1/chat/completions", chat("x" * 60), auth)
    error = json.loads(body)["error"]
    assert status == 403 and error["code"] == "prompt_too_large" and "'small'" in error["message"]
    assert (await gw.post("/v1/chat/completions", chat("a fine plan"), auth))[0] == 200
    assert fakes[0].stats()["calls"] == 1  # refused prompts never reached a replica


async def test_a_stream_is_cut_where_it_breaks_a_pattern(fakes, start_gateway, tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = fast_config(
        [fakes[0].url], content_policy__deny_patterns=[FOUR_TOKENS], audit__path=str(audit)
    )
    gw = await start_gateway(config)
    status, _, body = await gw.post("/v1/chat/completions", chat(stream=True, max_tokens=8))
    assert status == 200
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    content = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert content[:3] == [c for c in content[:3] if c] and len([c for c in content if c]) == 3
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    await until(lambda: fakes[0].stats()["in_flight"] == 0, 5, "the upstream request closed")
    await gw.runner.cleanup()  # flush the audit log
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert records[-1]["content_filter"] is True


async def test_a_whole_answer_over_the_policy_is_emptied_and_marked(fakes, start_gateway):
    gw = await start_gateway(
        fast_config([fakes[0].url], content_policy__deny_patterns=[FOUR_TOKENS])
    )
    status, _, body = await gw.post(
        "/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 8}
    )
    choice = json.loads(body)["choices"][0]
    assert status == 200 and choice == {**choice, "text": "", "finish_reason": "content_filter"}
    status, _, body = await gw.post(
        "/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 3}
    )
    assert json.loads(body)["choices"][0]["finish_reason"] == "length"  # 3 tokens: allowed


@pytest.fixture
async def moderation():
    """An OpenAI-compatible /v1/moderations: flags text with "forbidden" or three t-tokens."""
    seen: list[str] = []

    async def moderate(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["input"])
        flagged = "forbidden" in body["input"] or body["input"].count(" t") >= 3
        return web.json_response(
            {"id": "modr-1", "model": body["model"], "results": [{"flagged": flagged}]}
        )

    app = web.Application()
    app.router.add_post("/v1/moderations", moderate)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1/moderations", seen
    await runner.cleanup()


async def test_the_classifier_refuses_prompts_and_cuts_streams(fakes, start_gateway, moderation):
    url, seen = moderation
    config = fast_config(
        [fakes[0].url],
        content_policy__classifier_url=url,
        content_policy__classifier_model="guard",
        content_policy__classifier_every_chars=1,
    )
    gw = await start_gateway(config)
    fakes[0].control(token_delay_s=0.05)  # one event per read: the classifier sees each
    status, _, body = await gw.post("/v1/chat/completions", chat("something forbidden"))
    assert status == 400 and json.loads(body)["error"]["code"] == "content_filter"
    status, _, body = await gw.post("/v1/chat/completions", chat("ok", stream=True, max_tokens=8))
    events = sse_events(body)
    texts = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"]]
    assert len([t for t in texts if t]) == 2  # the third token's event was held back
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert any(s.count(" t") == 3 for s in seen)


async def test_an_unreachable_classifier_allows_unless_fail_closed(fakes, start_gateway):
    dead = f"http://127.0.0.1:{free_port()}/v1/moderations"
    gw = await start_gateway(fast_config([fakes[0].url], content_policy__classifier_url=dead))
    assert (await gw.post("/v1/chat/completions", chat(max_tokens=2)))[0] == 200
    closed = fast_config(
        [fakes[0].url], content_policy__classifier_url=dead, content_policy__fail_closed=True
    )
    gw = await start_gateway(closed)
    status, _, body = await gw.post("/v1/chat/completions", chat(max_tokens=2))
    assert status == 503 and json.loads(body)["error"]["code"] == "classifier_unavailable"
