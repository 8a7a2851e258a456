"""kv_cache_dtype="fp8": e4m3 KV blocks take half of bf16's bytes, so the same kv_cache_memory
holds twice the blocks, and what the engine reads back from them keeps the real model's
predictions (top-1 agreement through the engine itself: prompt logprobs with chunked prefill,
so every chunk after the first attends to K/V read from the fp8 cache)."""

import pytest

from herd import LLM, SamplingParams
from herd.engine.tokenizer import Tokenizer
from herd.model.default_model import ensure_default_model
from herd.model.quant_eval import fixed_text


def test_fp8_kv_doubles_the_blocks_of_a_budget(tiny_model_dir):
    blocks = {}
    for kv in ("auto", "bfloat16", "fp8"):
        llm = LLM(tiny_model_dir, dtype="bfloat16", kv_cache_dtype=kv, kv_cache_memory=1 << 20)
        blocks[kv] = llm.engine.stats()["num_total_blocks"]
    assert blocks["auto"] == blocks["bfloat16"]
    assert blocks["fp8"] == 2 * blocks["bfloat16"]


def test_fp8_kv_generates_through_decode_and_prefix_hits(tiny_model_dir):
    params = SamplingParams(max_tokens=12, temperature=0)
    prompts = ["Hello, world! " * 6, "Hello, world! " * 6 + "The quick brown fox"]
    outs = LLM(tiny_model_dir, kv_cache_dtype="fp8").generate(prompts, params)
    assert all(len(o.outputs[0].token_ids) == 12 for o in outs)


def _top1(llm: LLM, ids: list[int]) -> list[int]:
    out = llm.generate([ids], SamplingParams(max_tokens=1, prompt_logprobs=1))[0]
    return [
        next(t for t, lp in pos.items() if lp.rank == 1)
        for pos in out.prompt_logprobs
        if pos is not None
    ]


@pytest.fixture(scope="module")
def smollm2_dir():
    return ensure_default_model()


def test_fp8_kv_top1_agreement_on_a_real_model(smollm2_dir):
    ids = Tokenizer(smollm2_dir).encode(fixed_text())[:2048]
    common = dict(dtype="bfloat16", max_num_batched_tokens=256, enable_prefix_caching=False)
    ref = _top1(LLM(smollm2_dir, **common), ids)
    fp8 = _top1(LLM(smollm2_dir, kv_cache_dtype="fp8", **common), ids)
    assert len(ref) == len(fp8) == len(ids) - 1
    agreement = sum(a == b for a, b in zip(ref, fp8, strict=True)) / len(ref)
    print(f"fp8 KV top-1 agreement with bf16 KV: {agreement:.4f}")
    assert agreement >= 0.94  # measured 95.2%: e4m3 keeps 3 mantissa bits of each K/V value
