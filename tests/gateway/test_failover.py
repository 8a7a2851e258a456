"""Failover through real fake-replica processes: retries before the first byte, error events
after it, ejection and re-admission, loading replicas, backpressure."""

import asyncio
import json

from gwtools import chat, fast_config, sse_events
from prometheus_client.parser import text_string_to_metric_families

from herd.gateway.replicas import ReplicaState
from waiting import until


async def ejections(gw, url: str) -> float:
    """The gateway's own count of ejections of the replica at `url`, read from its /metrics."""
    async with gw.session.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "herd_gateway_ejections_total" and s.labels.get("replica") == url
    )


async def test_answers_and_spreads_over_replicas(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes]))
    seen = set()
    for _ in range(6):
        status, headers, body = await gw.post("/v1/chat/completions", chat())
        assert status == 200, body
        seen.add(json.loads(body)["system_fingerprint"])
        assert headers["x-request-id"]
    assert seen == {"fake0", "fake1", "fake2"}


async def test_5xx_and_garbage_are_retried_on_another_replica(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes]))
    fakes[0].control(mode="error500")
    fakes[1].control(mode="garbage")
    # Until the failing replica has failed three times in a row, which ejects it once.
    for _ in range(30):
        status, _, body = await gw.post("/v1/completions", {"model": "fake-model", "prompt": "hi"})
        assert status == 200, body
        assert json.loads(body)["system_fingerprint"] == "fake2"
        if fakes[0].stats()["calls"] >= 3:
            break
    assert fakes[0].stats()["calls"] == 3
    assert await ejections(gw, fakes[0].url) == 1
    # Re-admitted once /ready passes (after the backoff) and it answers again.
    fakes[0].reset()
    fakes[1].reset()
    await gw.wait_ready(3, timeout=5)


async def test_all_replicas_failing_gives_one_clear_502(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes]))
    for fake in fakes:
        fake.control(mode="garbage")
    status, _, body = await gw.post("/v1/chat/completions", chat())
    assert status == 502
    err = json.loads(body)["error"]
    assert err["type"] == "server_error" and "invalid response" in err["message"]
    assert sum(f.stats()["calls"] for f in fakes) == 3  # max_attempts
    for fake in fakes:
        fake.reset()
    # One failure each is below eject_after (3): nobody was ejected, the next request is served.
    assert [r.state for r in gw.gateway.replicas.all()] == [ReplicaState.READY] * 3
    status, _, _ = await gw.post("/v1/chat/completions", chat())
    assert status == 200


async def test_dead_replica_is_ejected_and_requests_succeed(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes] + ["http://127.0.0.1:9"]), ready=3)
    gw.gateway.replicas.set_state("http://127.0.0.1:9", ReplicaState.READY)  # pretend it was up
    results = await asyncio.gather(*(gw.post("/v1/chat/completions", chat()) for _ in range(12)))
    assert [r[0] for r in results] == [200] * 12
    assert gw.gateway.replicas.get("http://127.0.0.1:9").state is ReplicaState.EJECTED


async def test_hang_before_first_byte_is_retried(fakes, start_gateway):
    config = fast_config([f.url for f in fakes], proxy__first_byte_timeout_s=0.5)
    gw = await start_gateway(config)
    fakes[0].control(mode="hang", times=1)
    fakes[1].control(mode="hang", times=1)
    statuses = [
        (await gw.post("/v1/chat/completions", chat(f"q{i}", stream=True)))[0] for i in range(3)
    ]
    assert statuses == [200, 200, 200]


async def test_failures_after_streaming_began_end_with_an_error_event(fakes, start_gateway):
    config = fast_config([fakes[0].url], proxy__idle_timeout_s=0.5)
    gw = await start_gateway(config)
    for mode in ("die_midstream", "truncate", "bad_event", "hang_mid"):
        if mode == "hang_mid":
            fakes[0].control(mode="ok", token_delay_s=2.0)
        else:
            # Token pacing so the first events reach the client before the failure.
            fakes[0].control(mode=mode, times=1, token_delay_s=0.05)
        status, _, body = await gw.post("/v1/chat/completions", chat(mode, stream=True))
        assert status == 200
        events = sse_events(body)
        assert "error" in events[-1], (mode, events)
        assert events[0]["choices"][0]["delta"]["content"]  # some tokens arrived first
        assert "[DONE]" not in events
        fakes[0].reset()
        await gw.wait_ready(1, timeout=5)


async def test_stream_passes_through_unchanged(fakes, start_gateway):
    gw = await start_gateway(fast_config([fakes[0].url]))
    payload = {
        "model": "fake-model",
        "prompt": "abc",
        "stream": True,
        "max_tokens": 5,
        "stream_options": {"include_usage": True},
    }
    status, headers, body = await gw.post("/v1/completions", payload)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 5
    assert [e["choices"][0]["finish_reason"] for e in events[:5]] == [None] * 4 + ["length"]


async def test_client_errors_pass_through_without_retry(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes]))
    status, _, body = await gw.post("/v1/chat/completions", {**chat(), "model": "nope"})
    assert status == 404 and json.loads(body)["error"]["param"] == "model"
    assert sum(f.stats()["calls"] for f in fakes) == 1


async def test_loading_and_draining_replicas_get_no_traffic(fakes, start_gateway):
    fakes[1].control(ready=False)
    gw = await start_gateway(fast_config([f.url for f in fakes]), ready=2)
    # Two probes answered: the first one's 503 has been applied.
    probes = fakes[1].stats()["ready_probes"]
    await until(lambda: fakes[1].stats()["ready_probes"] >= probes + 2, 5, "two more probes")
    assert gw.gateway.replicas.get(fakes[1].url).state is ReplicaState.LOADING
    for _ in range(6):
        assert (await gw.post("/v1/chat/completions", chat()))[0] == 200
    assert fakes[1].stats()["calls"] == 0
    fakes[1].control(ready=True)
    await gw.wait_ready(3)
    fakes[2].control(ready=False)  # was ready: a 503 now means draining
    replica = gw.gateway.replicas.get(fakes[2].url)
    await until(lambda: replica.state is ReplicaState.DRAINING, 5, "fake2 draining")


async def test_backpressure_429_when_full_and_503_when_none_ready(fakes, start_gateway):
    config = fast_config(
        [fakes[0].url],
        proxy__max_in_flight_per_replica=1,
        proxy__queue_size=1,
        proxy__queue_timeout_s=0.3,
    )
    gw = await start_gateway(config)
    fakes[0].control(delay_s=1.0)
    results = await asyncio.gather(*(gw.post("/v1/chat/completions", chat()) for _ in range(3)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 429, 429]
    refused = [r for r in results if r[0] == 429]
    assert all(r[1]["Retry-After"] for r in refused)
    fakes[0].control(delay_s=0.0, ready=False)
    # Wait for a probe to see it: forcing the state raced a probe already in flight, whose
    # "ready" answer put the replica back in rotation.
    replica = gw.gateway.replicas.get(fakes[0].url)
    await until(lambda: replica.state is not ReplicaState.READY, 5, "fake0 out of rotation")
    status, headers, body = await gw.post("/v1/chat/completions", chat())
    assert status == 503 and headers["Retry-After"]
    assert json.loads(body)["error"]["code"] == "no_replica"
