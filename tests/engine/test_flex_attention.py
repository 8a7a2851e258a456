"""FlexAttention (one call per step over the paged cache, block mask from the block tables)
against TorchAttention, the reference: same outputs for a step mixing decodes and prefill chunks
with shared prefix blocks, and the same greedy tokens through the whole engine."""

import pytest
import torch

from herd.engine.attention import TorchAttention
from herd.engine.flex_attention import FlexAttention
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from tests.engine.conftest import BS, PROMPTS, mixed_step


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_flex_matches_the_reference_backend(dtype, tol):
    q, k, v, cache, meta = mixed_step(dtype)
    ref_cache, flex_cache = cache.clone(), cache.clone()
    ref = TorchAttention(BS).forward(q, k, v, ref_cache[0], ref_cache[1], meta())
    got = FlexAttention(BS).forward(q, k, v, flex_cache[0], flex_cache[1], meta())
    assert torch.equal(ref_cache, flex_cache)  # both wrote the same slots
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


def test_flex_engine_gives_the_reference_greedy_tokens(model_dirs):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = {}
    for name in ("torch", "flex"):
        llm = LLM(model_dirs["gqa"], attention_backend=name, num_kv_blocks=64)
        outs[name] = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert outs["flex"] == outs["torch"]
