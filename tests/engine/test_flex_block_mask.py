"""FlexAttention's tile-level block mask, built on the device from the block tables: every
(query, key) pair the exact mask allows lies in a tile the mask lists (the fused kernels visit only
those), no listed tile is empty, and the compiled kernel (CPU here, CUDA in the GPU suite) gives the
reference backend's outputs over a cache of several tiles."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask, flex_attention

from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.flex_attention import FlexAttention

BS, HQ, HKV, D, NB = 16, 4, 2, 16, 64


def _step(seed: int):
    """Two decodes sharing two prefix blocks, a 150-token prefill from 0 (two query tiles) and a
    40-token chunk after 260 cached tokens; blocks scattered over a 1040-slot cache (9 key tiles)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(NB, generator=g).tolist()
    query_lens, seq_lens = [1, 1, 150, 40], [37, 100, 150, 300]
    tables, i = [], 0
    for n in seq_lens:
        tables.append(perm[i : i + -(-n // BS)])
        i += -(-n // BS)
    tables[1][:2] = tables[0][:2]

    def meta() -> AttentionMetadata:
        return AttentionMetadata.from_tables(tables, query_lens, seq_lens, 2, BS)

    t = sum(query_lens)
    q, k, v = (torch.randn(t, h, D, generator=g) for h in (HQ, HKV, HKV))
    return q, k, v, torch.randn(2, NB + 1, BS, HKV, D, generator=g), meta


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_listed_tiles_cover_exactly_the_allowed_pairs(seed):
    q, _, _, cache, meta = _step(seed)
    mask = FlexAttention(BS)._block_mask(meta(), NB + 1, q)
    t, kv = q.shape[0], (NB + 1) * BS
    allowed = create_mask(mask.mask_mod, 1, 1, t, kv, device="cpu")[0, 0]
    qt, kt = mask.BLOCK_SIZE
    tiles = mask.to_dense()[0, 0].bool()
    pad = (0, tiles.shape[1] * kt - kv, 0, tiles.shape[0] * qt - t)
    per_tile = torch.nn.functional.pad(allowed, pad).view(tiles.shape[0], qt, tiles.shape[1], kt)
    touched = per_tile.any(dim=3).any(dim=1)
    assert torch.equal(tiles, touched)  # listed iff some allowed pair falls in it
    assert allowed.sum(1).tolist() == [37, 100] + list(range(1, 151)) + list(range(261, 301))


@pytest.mark.slow  # compiling flex's CPU kernel takes ~15 s here
def test_compiled_flex_over_several_tiles_matches_the_reference(monkeypatch):
    import herd.engine.flex_attention as flex_module

    q, k, v, cache, meta = _step(0)
    ref = TorchAttention(BS).forward(q, k, v, cache[0].clone(), cache[1].clone(), meta())
    monkeypatch.setattr(flex_module, "flex_attention", torch.compile(flex_attention))
    got = FlexAttention(BS).forward(q, k, v, cache[0].clone(), cache[1].clone(), meta())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
