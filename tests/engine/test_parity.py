"""Greedy output is token-for-token transformers' output, whatever the engine's settings."""

import pytest

from herd import LLM, SamplingParams
from tests.engine.conftest import CONFIGS, MAX_TOKENS

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


def run(model_dir, prompt_ids, **kwargs) -> list[list[int]]:
    llm = LLM(model_dir, dtype="float32", **kwargs)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY)
    return [o.outputs[0].token_ids for o in outs], llm


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_transformers(model_dirs, hf_reference, name):
    prompt_ids, expected = hf_reference[name]
    got, _ = run(model_dirs[name], prompt_ids)
    assert got == expected


@pytest.mark.parametrize(
    "settings",
    [
        dict(block_size=1),
        dict(block_size=16, max_num_batched_tokens=7),
        dict(max_num_seqs=1),
        dict(max_num_seqs=32, block_size=4),
        dict(enable_prefix_caching=False, block_size=2, max_num_batched_tokens=5),
    ],
    ids=["block1", "budget7", "seqs1", "seqs32", "nocache"],
)
def test_same_output_whatever_the_settings(model_dirs, hf_reference, settings):
    prompt_ids, expected = hf_reference["gqa"]
    got, _ = run(model_dirs["gqa"], prompt_ids, **settings)
    assert got == expected


def test_small_pool_preempts_and_still_matches(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["tied_llama3"]
    # 5 prompts of up to ~40 tokens + 12 outputs in blocks of 4: the pool holds about two.
    got, llm = run(model_dirs["tied_llama3"], prompt_ids, block_size=4, num_kv_blocks=16)
    assert got == expected
    assert llm.stats()["preemptions"] > 0


def test_prefix_cache_hits_with_same_output(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["mha"]
    llm = LLM(model_dirs["mha"], dtype="float32", block_size=4)
    first = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY)
    second = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY)
    assert [o.outputs[0].token_ids for o in second] == expected
    assert [o.outputs[0].token_ids for o in first] == expected
    # Every full block of each prompt (at least one token recomputed) came from the cache.
    assert [o.num_cached_tokens for o in second] == [(len(p) - 1) // 4 * 4 for p in prompt_ids]
    stats = llm.stats()
    assert stats["prefix_cache_hits"] == sum(o.num_cached_tokens for o in second)


def test_prefix_cache_eviction_under_pressure_stays_correct(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["gqa"]
    # 24 blocks of 4 tokens: the cache holds only part of the prompts, so later rounds mix
    # hits, evicted blocks and preemptions.
    llm = LLM(model_dirs["gqa"], dtype="float32", block_size=4, num_kv_blocks=24)
    batch = [{"prompt_token_ids": ids} for ids in prompt_ids]
    for order in (batch, batch[::-1], batch):
        outs = llm.generate(order, GREEDY)
        got = [o.outputs[0].token_ids for o in outs]
        assert got == [expected[prompt_ids.index(p["prompt_token_ids"])] for p in order]
    assert llm.stats()["prefix_cache_hits"] > 0
