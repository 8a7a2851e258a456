"""Bad input: a clear exception naming the problem, and no damage to other requests."""

import json
import shutil

import pytest

from herd import LLM, SamplingParams
from herd.engine.errors import InvalidRequestError, ModelLoadError


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, dtype="float32", max_model_len=64)


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-1), "temperature"),
        (dict(n=0), "n"),
        (dict(min_p=2), "min_p"),
        (dict(presence_penalty=3), "presence_penalty"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_bad_sampling_params(kwargs, param):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.param == param and param in str(err.value)


def test_prompt_longer_than_context_names_the_numbers(llm):
    with pytest.raises(InvalidRequestError, match=r"70 tokens.*context length is 64"):
        llm.generate([{"prompt_token_ids": [5] * 70}], SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        llm.generate([{"prompt_token_ids": [10**6]}], SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([{"prompt_token_ids": []}], SamplingParams(max_tokens=2))


def test_bad_request_does_not_disturb_others(llm):
    engine = llm.engine
    engine.add_request(
        "good", [1, 2, 3, 4], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    )
    with pytest.raises(InvalidRequestError):
        engine.add_request("bad", [7] * 100, SamplingParams(max_tokens=5))
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("good", [1], SamplingParams())
    outs = []
    while engine.has_unfinished_requests():
        outs.extend(engine.step())
    assert [o.request_id for o in outs if o.finished] == ["good"]
    assert sum(len(o.outputs[0].token_ids) for o in outs) == 5


def test_output_stops_at_the_context_length(llm):
    out = llm.generate(
        [{"prompt_token_ids": [5] * 60}], SamplingParams(max_tokens=100, ignore_eos=True)
    )[0]
    assert len(out.outputs[0].token_ids) == 4 and out.outputs[0].finish_reason == "length"


def test_abort_frees_blocks(llm):
    engine = llm.engine
    engine.add_request("a", list(range(1, 40)), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.kv.pool.num_free_blocks < engine.kv.pool.num_blocks
    engine.abort_request("a")
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks
    (out,) = engine.step()
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert not engine.has_unfinished_requests()


def test_unknown_directory():
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM("/nonexistent/model")


def test_malformed_config(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        LLM(d)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="hidden_size"):
        LLM(d)


def test_request_metrics_and_engine_stats(llm):
    out = llm.generate(["Hello world"], SamplingParams(max_tokens=3, ignore_eos=True))[0]
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
    assert m.queue_time >= 0
    stats = llm.stats()
    for key in ("num_running", "num_waiting", "kv_usage", "preemptions", "prefix_cache_queries"):
        assert key in stats
    assert stats["num_running"] == stats["num_waiting"] == 0
