"""The C++ paged prefill kernel against torch's SDPA over each chunk's context copied out of the
cache with a causal-by-position mask (the reference): first chunks, chunks after a cached prefix,
one-token chunks, contexts over many key tiles, GQA ratios from 1 to past a task's rows, head
sizes odd and even, float32 and bfloat16; and the same tokens through the engine, chunked and
prefix-cached, as the torch backend."""

import pytest
import torch
import torch.nn.functional as F

from herd.engine import cpu_paged_prefill
from herd.engine.attention import AttentionMetadata
from herd.engine.cpu_paged_decode import CpuAttention
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from tests.engine.conftest import PROMPTS

pytestmark = pytest.mark.skipif(
    cpu_paged_prefill.load_kernel() is None, reason="no C++ compiler, or neither AVX-512 nor AVX2"
)


def _step(g, dtype, hq, hkv, d, bs, chunks, decodes):
    """A step of `decodes` decode rows then prefill `chunks` (query tokens, context after the
    step), each chunk's context in scattered blocks of a cache of random K/V; q is a view into a
    fused QKV row, as the model passes it."""
    need = [-(-ctx // bs) for _, ctx in chunks]
    cache = torch.randn(2, sum(need) + 3, bs, hkv, d, generator=g).to(dtype)
    perm = torch.randperm(cache.shape[1], generator=g)
    starts = [sum(need[:i]) for i in range(len(need))]
    tables = [perm[s : s + n] for s, n in zip(starts, need, strict=True)]
    t = decodes + sum(ql for ql, _ in chunks)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g).to(dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(t, dtype=torch.long),
        num_decodes=decodes,
        query_lens=[1] * decodes + [ql for ql, _ in chunks],
        seq_lens=[1] * decodes + [ctx for _, ctx in chunks],
        prefill_block_ids=tables,
        decode_block_table=None,
        decode_seq_lens=None,
    )
    return qkv[:, : hq * d].view(t, hq, d), cache, meta


def _reference(q, cache, meta):
    """Per chunk, float32 SDPA over its context gathered block by block, query i at position
    ctx - ql + i seeing keys up to it."""
    out, tok = [], meta.num_decodes
    for i, table in enumerate(meta.prefill_block_ids):
        ql, ctx = meta.query_lens[meta.num_decodes + i], meta.seq_lens[meta.num_decodes + i]
        k, v = (cache[j, table].flatten(0, 1)[:ctx].float().transpose(0, 1) for j in (0, 1))
        pos = torch.arange(ctx - ql, ctx)
        mask = torch.arange(ctx)[None, :] <= pos[:, None]
        qi = q[tok : tok + ql].float().transpose(0, 1)
        o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, enable_gqa=True)
        out.append(o.transpose(0, 1))
        tok += ql
    return torch.cat(out).to(q.dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(
    "hq,hkv,d",
    [(4, 2, 16), (12, 4, 64), (6, 6, 18), (8, 1, 128), (10, 2, 24), (70, 1, 8), (4, 4, 7)],
)
@pytest.mark.parametrize("bs", [1, 4, 16])
def test_kernel_matches_sdpa_over_the_gathered_context(dtype, tol, hq, hkv, d, bs):
    g = torch.Generator().manual_seed(hq * 1000 + d * 10 + bs)
    chunks = [(37, 37), (5, 70), (1, 1), (1, 9), (90, 90), (3, 3)]
    q, cache, meta = _step(g, dtype, hq, hkv, d, bs, chunks, decodes=2)
    out = torch.full_like(q, 7.0)
    CpuAttention(bs)._prefill_chunks(q, None, None, cache[0], cache[1], meta, out)
    torch.testing.assert_close(out[2:], _reference(q, cache, meta), atol=tol, rtol=tol)
    assert (out[:2] == 7.0).all()  # the decode rows are not its to write


def test_a_long_chunk_after_a_long_prefix():
    """Keys over many tiles and blocks, queries over many tasks, bf16 scores of size ~10."""
    g = torch.Generator().manual_seed(5)
    q, cache, meta = _step(g, torch.bfloat16, 12, 4, 64, 16, [(300, 1000)], decodes=0)
    q.mul_(3)
    out = torch.empty_like(q)
    CpuAttention(16)._prefill_chunks(q, None, None, cache[0], cache[1], meta, out)
    torch.testing.assert_close(out, _reference(q, cache, meta), atol=2e-2, rtol=2e-2)


def test_what_it_does_not_take_goes_to_sdpa():
    attn = CpuAttention(4)
    cache = torch.zeros(2, 4, 4, 2, 8)
    assert cpu_paged_prefill.supports(torch.zeros(3, 4, 8), cache[0])
    assert not cpu_paged_prefill.supports(torch.zeros(3, 4, 8, dtype=torch.float16), cache[0])
    assert not cpu_paged_prefill.supports(torch.zeros(3, 8, 4).transpose(1, 2), cache[0])
    assert not cpu_paged_prefill.supports(torch.zeros(3, 4, 8), cache.transpose(1, 2)[0])
    assert "C++ paged prefill kernel" in attn.describe()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_chunked_and_prefix_cached_gives_the_torch_backends_tokens(model_dirs, dtype):
    """Prompts sharing a prefix (cache hits), split into chunks of 16 tokens: the later chunks
    read their context through the table. Tokens and logprobs agree with the SDPA path's; the
    tokens may part only where the SDPA path's top two are within the tolerance, and the rest
    of that sequence is then left (a tie within bf16's rounding: built for AVX2, torch's SDPA
    rounds differently from its AVX-512 build, and one such tie split)."""
    shared = PROMPTS[3] + " " + PROMPTS[1]
    prompts = [shared + " one", shared + " two", PROMPTS[0], shared + " three"]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    tol = 1e-4 if dtype == "float32" else 3e-2
    outs = {}
    for name in ("torch", "cpu"):
        llm = LLM(model_dirs["gqa"], attention_backend=name, num_kv_blocks=64, block_size=4,
                  max_num_batched_tokens=16, dtype=dtype)  # fmt: skip
        first = llm.generate(prompts[:1], params)  # its blocks are cached for the others
        rest = llm.generate(prompts[1:], params)
        assert rest[0].num_cached_tokens > 0
        outs[name] = [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in first + rest]
    followed = 0
    for (ids, lps), (ref_ids, ref_lps) in zip(outs["cpu"], outs["torch"], strict=True):
        for t, ref_t, lp, ref_lp in zip(ids, ref_ids, lps, ref_lps, strict=True):
            assert lp[t].logprob == pytest.approx(ref_lp[t].logprob, abs=tol)
            if t != ref_t:  # only a tie may split them
                top = sorted((x.logprob for x in ref_lp.values()), reverse=True)
                assert top[0] - top[1] <= tol
                break
            followed += 1
    assert followed >= 12


def test_a_build_for_cpus_without_avx2_exports_nothing():
    """So `load_kernel` returns None there and the backend keeps SDPA."""
    from herd.engine.native_build import FLAGS, load_library

    flags = [f.replace("native", "x86-64-v2") for f in FLAGS if f != "-mprefer-vector-width=512"]
    lib = load_library("paged_prefill.cpp", flags)
    if lib is None:
        pytest.skip("not an x86-64 compiler")
    assert not hasattr(lib, cpu_paged_prefill.SYMBOLS[torch.bfloat16])
