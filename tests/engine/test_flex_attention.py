"""FlexAttention (one call per step over the paged cache, block mask from the block tables)
against TorchAttention, the reference: same outputs for a step mixing decodes and prefill chunks
with shared prefix blocks, and the same greedy tokens through the whole engine."""

import pytest
import torch

from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.flex_attention import FlexAttention
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from tests.engine.conftest import PROMPTS

BS, HQ, HKV, D, BLOCKS = 4, 4, 2, 16, 24


def _step(dtype):
    """Two decodes (contexts 7 and 9, sharing block 3) and two prefill chunks: one from position
    0, one continuing after 5 cached tokens."""
    g = torch.Generator().manual_seed(0)
    query_lens, seq_lens = [1, 1, 3, 4], [7, 9, 3, 9]
    tables = [[3, 5], [3, 8, 9], [11], [12, 13, 14]]
    slots = []
    for t, q, n in zip(tables, query_lens, seq_lens, strict=True):
        slots += [t[p // BS] * BS + p % BS for p in range(n - q, n)]
    width = max(len(t) for t in tables[:2])

    def meta() -> AttentionMetadata:  # a fresh one per backend: FlexAttention caches its mask
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots),
            num_decodes=2,
            query_lens=query_lens,
            seq_lens=seq_lens,
            prefill_block_ids=[torch.tensor(t) for t in tables[2:]],
            decode_block_table=torch.tensor([t + [0] * (width - len(t)) for t in tables[:2]]),
            decode_seq_lens=torch.tensor(seq_lens[:2]),
        )

    t = sum(query_lens)
    q, k, v = (torch.randn(t, h, D, generator=g, dtype=dtype) for h in (HQ, HKV, HKV))
    cache = torch.randn(2, BLOCKS, BS, HKV, D, generator=g, dtype=dtype)
    return q, k, v, cache, meta


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_flex_matches_the_reference_backend(dtype, tol):
    q, k, v, cache, meta = _step(dtype)
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
