"""Stop conditions as in the OpenAI API: stop strings, EOS, stop tokens, max_tokens, min_tokens."""

import json
import shutil

import pytest

from herd import LLM, SamplingParams

PROMPT = "The quick brown fox jumps over the lazy dog. herd serves"


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, dtype="float32")


@pytest.fixture(scope="module")
def greedy(llm):
    return llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[
        0
    ].outputs[0]


def test_max_tokens_gives_length(greedy):
    assert len(greedy.token_ids) == 20 and greedy.finish_reason == "length"


def test_stop_string_truncates_text(llm, greedy):
    stop = greedy.text[5:8]
    assert stop.strip() and "\ufffd" not in stop
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20, stop=[stop]))[
        0
    ].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == greedy.text[: greedy.text.index(stop)]
    kept = llm.generate(
        [PROMPT],
        SamplingParams(temperature=0, max_tokens=20, stop=stop, include_stop_str_in_output=True),
    )[0].outputs[0]
    assert kept.text == greedy.text[: greedy.text.index(stop) + len(stop)]


def test_stop_token_ids(llm, greedy):
    tok = greedy.token_ids[3]
    first = greedy.token_ids.index(tok)
    out = llm.generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[tok])
    )[0].outputs[0]
    assert out.token_ids == greedy.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == tok


@pytest.fixture(scope="module")
def eos_model(tiny_model_dir, greedy, tmp_path_factory):
    """The tiny model with its EOS set to the 4th token it generates greedily."""
    d = tmp_path_factory.mktemp("eos") / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [greedy.token_ids[3]]}))
    return d


def test_eos_stops_unless_ignored_or_before_min_tokens(eos_model, greedy):
    llm = LLM(eos_model, dtype="float32")
    eos = greedy.token_ids[3]
    first = greedy.token_ids.index(eos)
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20))[0].outputs[0]
    assert out.token_ids == greedy.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason is None
    ignored = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[
        0
    ]
    assert len(ignored.outputs[0].token_ids) == 20
    late = llm.generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=20, min_tokens=first + 2)
    )[0]
    assert len(late.outputs[0].token_ids) >= first + 2
    assert eos not in late.outputs[0].token_ids[: first + 1]


def test_logprobs_and_prompt_logprobs(llm):
    out = llm.generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=4, logprobs=3, prompt_logprobs=2)
    )[0]
    comp = out.outputs[0]
    assert len(comp.logprobs) == 4
    for tok, lp in zip(comp.token_ids, comp.logprobs, strict=True):
        assert tok in lp and len(lp) == 3  # greedy: the sampled token is the top one
        assert lp[tok] == max(lp.values())
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    for tok, lp in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:], strict=True):
        assert tok in lp and 2 <= len(lp) <= 3


def test_chat_uses_the_template(llm):
    messages = [{"role": "user", "content": "Hi there"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=3))[0]
    expected = llm.get_tokenizer().hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert llm.get_tokenizer().decode(out.prompt_token_ids, skip_special_tokens=False) == expected


def test_logprobs_read_as_floats_or_like_vllm(llm):
    out = llm.generate([PROMPT], SamplingParams(temperature=1.0, seed=3, max_tokens=3, logprobs=2))
    for tok, lp in zip(out[0].outputs[0].token_ids, out[0].outputs[0].logprobs, strict=True):
        ranked = sorted(lp.values(), reverse=True)
        assert lp[tok].logprob == float(lp[tok]) and lp[tok].rank >= 1
        assert [v.rank for v in ranked[:2]] == [1, 2]
