"""Speculative decoding changes speed, never outputs: greedy tokens are transformers' (n-gram and
draft model, through chunked prefill, preemption and the prefix cache), seeded sampled requests
give the same tokens and logprobs as without speculation, stops inside accepted drafts
truncate, grammar rows are left alone, and the counters show what was proposed and accepted."""

import pytest

from herd import LLM, SamplingParams
from herd.engine.sampling_params import StructuredOutputsParams
from tests.engine.conftest import MAX_TOKENS

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


def _spec(method: str, draft=None, k: int = 3) -> dict:
    spec = {"method": method, "num_speculative_tokens": k, "adaptive": False}
    return spec | ({"model": str(draft)} if draft is not None else {})


def _run(model_dir, prompt_ids, params=GREEDY, **kwargs):
    llm = LLM(model_dir, dtype="float32", **kwargs)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    return outs, llm


@pytest.mark.parametrize("method", ["ngram", "draft_self", "draft_other"])
def test_greedy_matches_transformers(model_dirs, hf_reference, method):
    prompt_ids, expected = hf_reference["gqa"]
    draft = {"draft_self": model_dirs["gqa"], "draft_other": model_dirs["mha"]}.get(method)
    spec = _spec("ngram" if draft is None else "draft", draft)
    outs, llm = _run(model_dirs["gqa"], prompt_ids, speculative_config=spec)
    assert [o.outputs[0].token_ids for o in outs] == expected
    stats = llm.stats()
    assert stats["spec_proposed_tokens"] > 0
    if method == "draft_self":  # the target drafting for itself: every greedy draft is right
        assert stats["spec_accepted_tokens"] == stats["spec_proposed_tokens"]


@pytest.mark.parametrize(
    "settings",
    [
        dict(block_size=4, max_num_batched_tokens=7),  # chunked prefill, drafts cut by budget
        dict(block_size=4, num_kv_blocks=12),  # preemption (the longest request alone fits)
    ],
    ids=["budget7", "preempt"],
)
def test_greedy_matches_under_chunking_and_preemption(model_dirs, hf_reference, settings):
    prompt_ids, expected = hf_reference["tied_llama3"]
    spec = _spec("draft", model_dirs["tied_llama3"], k=4)
    outs, llm = _run(model_dirs["tied_llama3"], prompt_ids, speculative_config=spec, **settings)
    assert [o.outputs[0].token_ids for o in outs] == expected
    if "num_kv_blocks" in settings:
        assert llm.stats()["preemptions"] > 0


def test_prefix_cache_second_round_matches(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["mha"]
    llm = LLM(model_dirs["mha"], dtype="float32", block_size=4, speculative_config=_spec("ngram"))
    for _ in range(2):
        outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY)
        assert [o.outputs[0].token_ids for o in outs] == expected
    assert llm.stats()["prefix_cache_hits"] > 0


def test_seeded_sampling_n2_and_logprobs_are_unchanged(model_dirs, hf_reference):
    prompt_ids, _ = hf_reference["gqa"]
    params = SamplingParams(
        n=2, temperature=0.9, top_p=0.95, presence_penalty=0.3, seed=7, max_tokens=10,
        logprobs=2, ignore_eos=True,
    )  # fmt: skip
    plain, _ = _run(model_dirs["gqa"], prompt_ids, params)
    spec = _spec("draft", model_dirs["gqa"])
    fast, llm = _run(model_dirs["gqa"], prompt_ids, params, speculative_config=spec)
    assert llm.stats()["spec_accepted_tokens"] > 0
    for a, b in zip(plain, fast, strict=True):
        for x, y in zip(a.outputs, b.outputs, strict=True):
            assert x.token_ids == y.token_ids
            assert len(y.logprobs) == len(y.token_ids)
            for pa, pb in zip(x.logprobs, y.logprobs, strict=True):
                assert pa.keys() == pb.keys()
                assert all(abs(pa[t] - pb[t]) < 1e-4 for t in pa)


def test_stops_inside_accepted_drafts_truncate(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["gqa"]
    llm = LLM(model_dirs["gqa"], dtype="float32")
    text = llm.generate([{"prompt_token_ids": prompt_ids[1]}], GREEDY)[0].outputs[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cases = [
        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=[stop]),
        SamplingParams(temperature=0, max_tokens=16, stop_token_ids=[expected[3][5]]),
        SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
    ]
    spec = _spec("draft", model_dirs["gqa"], 6)
    spec_llm = LLM(model_dirs["gqa"], dtype="float32", speculative_config=spec)
    batch = [{"prompt_token_ids": ids} for ids in prompt_ids[1:4]]
    for params in cases:
        want = llm.generate(batch, params)
        got = spec_llm.generate(batch, params)
        for w, g in zip(want, got, strict=True):
            w, g = w.outputs[0], g.outputs[0]
            assert (g.token_ids, g.text, g.finish_reason, g.stop_reason) == (
                w.token_ids, w.text, w.finish_reason, w.stop_reason,
            )  # fmt: skip
    assert spec_llm.stats()["spec_accepted_tokens"] > 0


def test_grammar_rows_are_not_speculated(model_dirs):
    constrained = SamplingParams(
        temperature=0, max_tokens=24,
        structured_outputs=StructuredOutputsParams(choice=("alpha", "beta gamma")),
    )  # fmt: skip
    prompts = [{"prompt_token_ids": [5, 6, 7, 5, 6, 7, 5, 6]}] * 2
    params = [constrained, GREEDY]
    want = LLM(model_dirs["gqa"], dtype="float32").generate(prompts, params)
    got = LLM(
        model_dirs["gqa"], dtype="float32", speculative_config=_spec("draft", model_dirs["gqa"])
    ).generate(prompts, params)
    assert got[0].outputs[0].text in ("alpha", "beta gamma")
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]


def test_bad_speculative_config_is_refused(model_dirs):
    for bad in (
        {"method": "eagle"},
        {"method": "draft"},
        {"method": "ngram", "num_speculative_tokens": 0},
        {"method": "ngram", "bogus": 1},
        "{not json",
    ):
        with pytest.raises(ValueError, match="speculative_config"):
            LLM(model_dirs["gqa"], speculative_config=bad)
