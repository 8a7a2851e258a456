"""A real `herd replica` process on loopback with the tiny model, driven by the official `openai`
client: greedy outputs equal the offline `LLM`, 64 concurrent streams, disconnect frees blocks,
/metrics counts what was sent, errors keep the replica serving, SIGTERM drains and exits 0."""

import asyncio
import json
import signal
import urllib.request

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.server.launch import ReplicaProcess
from waiting import until, wait_until

ENGINE_ARGS = ("--dtype", "float32", "--device", "cpu", "--max-num-seqs", "64")
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    with ReplicaProcess(tiny_model_dir, *ENGINE_ARGS, "--served-model-name", "tiny") as r:
        yield r


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    return LLM(str(tiny_model_dir), dtype="float32", device="cpu", max_num_seqs=64)


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def metrics(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics") as resp:
        text = resp.read().decode()
    return {
        (s.name + json.dumps(s.labels, sort_keys=True) if s.labels else s.name): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_sync_client_completions_equal_offline(replica, offline):
    ref = offline.generate(PROMPT, greedy(12))[0].outputs[0]
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    resp = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    assert resp.choices[0].text == ref.text
    assert resp.choices[0].model_extra["token_ids"] == ref.token_ids
    assert resp.usage.completion_tokens == len(ref.token_ids)

    stream = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason


def test_batch_of_prompts_equals_offline(replica, offline):
    prompts = [PROMPT, "Hello world", [5, 6, 7]]
    refs = offline.generate(
        [p if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts],
        greedy(6, n=1),
    )
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    resp = client.completions.create(
        model="tiny", prompt=[PROMPT, "Hello world"], max_tokens=6, temperature=0, n=2
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert [c.text for c in resp.choices] == [refs[0].outputs[0].text] * 2 + [
        refs[1].outputs[0].text
    ] * 2
    prompt_tokens = len(refs[0].prompt_token_ids) + len(refs[1].prompt_token_ids)
    assert resp.usage.prompt_tokens == prompt_tokens and resp.usage.completion_tokens == 24
    ids = client.completions.create(
        model="tiny", prompt=[[5, 6, 7], [5, 6]], max_tokens=6, temperature=0
    )
    assert ids.choices[0].text == refs[2].outputs[0].text
    stream = client.completions.create(
        model="tiny",
        prompt=[PROMPT, "Hello world"],
        max_tokens=6,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, usage = ["", "", "", ""], None
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
        usage = chunk.usage or usage
    assert texts == [c.text for c in resp.choices]
    assert usage.prompt_tokens == prompt_tokens and usage.completion_tokens == 24
    for stream_it in (False, True):  # one bad prompt refuses the whole batch, nothing runs
        with pytest.raises(openai.BadRequestError):
            client.completions.create(
                model="tiny", prompt=[[5, 6], [10**7]], max_tokens=2, stream=stream_it
            )


async def test_async_client_chat_equals_offline(replica, offline):
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    ref = offline.chat(messages, greedy(10))[0]
    client = openai.AsyncOpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    resp = await client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    assert resp.choices[0].message.content == ref.outputs[0].text
    assert resp.usage.prompt_tokens == len(ref.prompt_token_ids)

    stream = await client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == ref.outputs[0].text
    assert usage.completion_tokens == len(ref.outputs[0].token_ids)
    await client.close()


async def test_64_concurrent_streams_equal_offline(replica, offline):
    prompts = [f"Request {i}: the quick brown fox number {i * 7}" for i in range(64)]
    refs = offline.generate(prompts, greedy(16))
    client = openai.AsyncOpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)

    async def one(prompt: str) -> str:
        stream = await client.completions.create(
            model="tiny", prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream if c.choices])

    texts = await asyncio.gather(*(one(p) for p in prompts))
    assert texts == [r.outputs[0].text for r in refs]
    await client.close()


async def _wait_idle(url: str, timeout: float = 10.0) -> dict:
    """The replica's metrics once nothing runs or waits and every KV block is free again."""

    async def idle() -> dict | None:
        m = await asyncio.to_thread(metrics, url)
        quiet = m["herd_num_requests_running"] == 0 and m["herd_num_requests_waiting"] == 0
        return (
            m
            if quiet and m["herd_kv_cache_free_blocks"] == m["herd_kv_cache_total_blocks"]
            else None
        )

    return await until(idle, timeout, "an idle replica with every block free")


async def test_disconnect_mid_stream_frees_blocks(replica):
    body = {"prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    aborted = 'herd_request_success_total{"finish_reason": "abort"}'
    before = await _wait_idle(replica.url)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(replica.url + "/v1/completions", json=body)
        for _ in range(3):
            await resp.content.readline()
        busy = await asyncio.to_thread(metrics, replica.url)
        assert busy["herd_num_requests_running"] == 1
        assert busy["herd_kv_cache_free_blocks"] < busy["herd_kv_cache_total_blocks"]
        resp.close()  # the client goes away
    m = await _wait_idle(replica.url)  # fails unless the aborted request's blocks come back
    assert m.get(aborted, 0) - before.get(aborted, 0) == 1


async def test_metrics_counters_match_what_was_sent(replica):
    before = await _wait_idle(replica.url)
    client = openai.AsyncOpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    usages = []
    for i in range(5):
        resp = await client.completions.create(
            model="tiny",
            prompt=f"count {i}",
            max_tokens=7,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        usages.append(resp.usage)
    await client.close()
    after = metrics(replica.url)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta("herd_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("herd_generation_tokens_total") == 35
    assert delta('herd_request_success_total{"finish_reason": "length"}') == 5
    assert delta("herd_e2e_request_latency_seconds_count") == 5
    assert delta("herd_time_to_first_token_seconds_count") == 5
    assert delta("herd_inter_token_latency_seconds_count") == 30
    assert delta("herd_request_queue_time_seconds_count") == 5
    # Every admitted prompt is looked up; prompts shorter than one block cannot hit.
    assert delta("herd_prefix_cache_queries_total") == sum(u.prompt_tokens for u in usages)
    assert max(u.prompt_tokens for u in usages) < 16 and delta("herd_prefix_cache_hits_total") == 0


async def test_errors_leave_the_replica_serving(replica):
    async with aiohttp.ClientSession() as s:
        url = replica.url + "/v1/completions"

        async def error(resp, status):
            assert resp.status == status
            err = (await resp.json())["error"]
            assert set(err) == {"message", "type", "param", "code"}
            return err

        await error(await s.post(url, data=b"{oops"), 400)
        await error(await s.post(url, data=b'{"prompt": "\xc3\x28"}'), 400)
        await error(await s.post(url, json={"prompt": "x", "n": 100000}), 400)
        await error(await s.post(url, json={"prompt": "x", "max_tokens": -5}), 400)
        await error(await s.post(url, json={"prompt": "x", "model": "gpt-9"}), 404)
        await error(await s.post(url, json={"prompt": [10**9]}), 400)
        # schemathesis found this one: echo decoded the ids before the engine had checked them
        await error(await s.post(url, json={"prompt": [[2**64]], "echo": True}), 400)
        err = await error(await s.post(url, json={"prompt": "a" * 5000}), 400)
        assert "2048" in err["message"]
        await error(await s.post(url, data=b" " * (9 << 20)), 413)
        ok = await s.post(url, json={"prompt": "x", "max_tokens": 2})
        assert ok.status == 200
        assert (await s.get(replica.url + "/health")).status == 200


def test_continuous_usage_stats_through_openai_client(replica):
    """vLLM's stream_options extension, as load generators send it: usage in every chunk."""
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks and all(c.usage is not None for c in chunks)
    done = [c.usage.completion_tokens for c in chunks]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 6
    assert len({c.usage.prompt_tokens for c in chunks}) == 1
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.total_tokens == 6 + chunks[0].usage.prompt_tokens
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text  # the content still arrives beside the usage


def test_logit_bias_forces_a_token_like_offline(replica, offline):
    forced = 42
    ref = offline.generate(PROMPT, greedy(5, ignore_eos=True, logit_bias={forced: 100}))
    assert ref[0].outputs[0].token_ids == [forced] * 5
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    resp = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=5,
        temperature=0.7,  # a bias of 100 wins the draw too
        seed=1,
        logit_bias={str(forced): 100},
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    assert resp.choices[0].model_extra["token_ids"] == [forced] * 5


def test_prompt_logprobs_equal_offline(replica, offline):
    ref = offline.generate(PROMPT, greedy(2, prompt_logprobs=2))[0]
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    resp = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 2}
    )
    got = resp.choices[0].model_extra["prompt_logprobs"]
    assert len(got) == len(ref.prompt_token_ids) and got[0] is None
    for want, entry in zip(ref.prompt_logprobs[1:], got[1:], strict=True):
        assert {int(t) for t in entry} == set(want)
        for t, lp in want.items():
            assert entry[str(t)]["logprob"] == pytest.approx(float(lp), abs=1e-5)
            assert entry[str(t)]["rank"] == lp.rank


def test_refusals_are_logged_and_counted_by_reason(replica):
    before = metrics(replica.url)
    client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model="tiny",
            prompt=PROMPT,
            logit_bias={"999999": 5},  # outside the 512-token vocabulary
            extra_headers={"X-Request-Id": "h1-refusal-probe"},
        )
    assert info.value.body["param"] == "logit_bias" and "vocabulary" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt=PROMPT, extra_body={"frobnicate": 1})
    assert info.value.body["param"] == "frobnicate"
    after = metrics(replica.url)

    def delta(reason: str) -> float:
        key = f'herd_rejected_requests_total{{"reason": "{reason}", "status": "400"}}'
        return after.get(key, 0) - before.get(key, 0)

    assert (delta("invalid_value"), delta("unknown_parameter")) == (1, 1)
    line = "refused 400 POST /v1/completions param=logit_bias request_id=h1-refusal-probe"
    wait_until(lambda: line in replica.log(), what="the refusal's log line")


async def test_sigterm_under_load_drains_and_exits_zero(tiny_model_dir):
    r = ReplicaProcess(tiny_model_dir, *ENGINE_ARGS, "--drain-timeout", "60").wait_ready()
    body = {"prompt": PROMPT, "max_tokens": 120, "ignore_eos": True, "stream": True}
    try:
        async with aiohttp.ClientSession() as s:
            streams = [await s.post(r.url + "/v1/completions", json=body) for _ in range(8)]
            for resp in streams:
                await resp.content.readline()  # every request is in flight
            r.proc.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:
                async with s.get(r.url + "/ready") as resp:
                    return resp.status == 503

            await until(not_ready, 10, "/ready answering 503 after SIGTERM")
            refused = await s.post(r.url + "/v1/completions", json={"prompt": "late"})
            assert refused.status == 503 and "Retry-After" in refused.headers

            async def finish(resp) -> list:
                text = await resp.text()
                events = [e[6:] for e in text.split("\n\n") if e.startswith("data: ")]
                assert events[-1] == "[DONE]"
                return [json.loads(e) for e in events[:-1]]

            for chunks in await asyncio.gather(*(finish(x) for x in streams)):
                assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert await asyncio.to_thread(r.proc.wait, 30) == 0
        assert "drained" in r.log()
    finally:
        r.stop()
