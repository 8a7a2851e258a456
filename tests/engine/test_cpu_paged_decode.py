"""The C++ paged decode kernel against torch's SDPA over each sequence's context copied out of
the cache (the reference), across GQA ratios, head sizes with and without the vector path, few
and many sequences, float32 and bfloat16; and the same greedy tokens through the engine."""

import pytest
import torch
import torch.nn.functional as F

from herd.engine.attention import AttentionMetadata
from herd.engine.cpu_paged_decode import CpuAttention, load_kernel
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from tests.engine.conftest import PROMPTS

pytestmark = pytest.mark.skipif(load_kernel() is None, reason="no C++ compiler")
BS = 4


def _reference(q, cache, tables, lens):
    """SDPA per sequence over its first lens[b] tokens, gathered block by block."""
    out = []
    for b, (row, n) in enumerate(zip(tables, lens, strict=True)):
        k = cache[0, row].reshape(-1, *cache.shape[3:])[:n].float()
        v = cache[1, row].reshape(-1, *cache.shape[3:])[:n].float()
        o = F.scaled_dot_product_attention(
            q[b, :, None].float(), k.transpose(0, 1), v.transpose(0, 1), enable_gqa=True
        )
        out.append(o[:, 0])
    return torch.stack(out).to(q.dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(
    "hq,hkv,d", [(4, 2, 16), (6, 2, 32), (4, 4, 24), (3, 1, 64), (8, 1, 128), (12, 4, 80)]
)
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_kernel_matches_sdpa_over_the_gathered_context(dtype, tol, hq, hkv, d, batch):
    g = torch.Generator().manual_seed(batch * 100 + d)
    blocks = 6 * batch  # each sequence owns up to 6 blocks, scattered
    cache = torch.randn(2, blocks, BS, hkv, d, generator=g).to(dtype)
    lens = torch.randint(1, 6 * BS, (batch,), generator=g)
    perm = torch.randperm(blocks, generator=g).tolist()
    tables = [perm[i * 6 : i * 6 + -(-int(n) // BS)] for i, n in enumerate(lens)]
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    q = torch.randn(batch, hq, d, generator=g).to(dtype)
    meta = AttentionMetadata(torch.zeros(0, dtype=torch.long), batch, [1] * batch,
                             lens.tolist(), [], table, lens)  # fmt: skip
    got = CpuAttention(BS)._decode(q, cache[0], cache[1], meta)
    want = _reference(q, cache, tables, lens.tolist())
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_engine_with_the_kernel_gives_the_reference_greedy_tokens(model_dirs):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = {}
    for name in ("torch", "cpu"):
        llm = LLM(model_dirs["gqa"], attention_backend=name, num_kv_blocks=64)
        outs[name] = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert outs["cpu"] == outs["torch"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_native_kv_store_writes_what_index_copy_writes(dtype):
    """K and V as views into a fused QKV row (strided tokens) land in their slots; an fp8 cache
    goes the torch way (cast first)."""
    from herd.engine.attention import TorchAttention

    g = torch.Generator().manual_seed(1)
    hkv, d, t = 2, 8, 5
    qkv = torch.randn(t, (3 + 2) * hkv * d, generator=g)
    qkv = qkv.to(dtype if dtype != torch.float8_e4m3fn else torch.bfloat16)
    k = qkv[:, 3 * hkv * d : 4 * hkv * d].view(t, hkv, d)
    v = qkv[:, 4 * hkv * d :].view(t, hkv, d)
    slots = torch.tensor([7, 0, 12, 3, 9])
    caches = [torch.zeros(4, BS, hkv, d, dtype=dtype) for _ in range(4)]
    CpuAttention(BS)._store(k, v, caches[0], caches[1], slots)
    TorchAttention(BS)._store(k, v, caches[2], caches[3], slots)
    for mine, ref in zip(caches[:2], caches[2:], strict=True):
        assert torch.equal(mine.view(torch.uint8), ref.view(torch.uint8))
    assert caches[0].view(torch.uint8).any()
