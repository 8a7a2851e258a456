"""`FlexAttention`: every query token of a step (decodes and prefill chunks of all sequences) in
one `flex_attention` call over the whole paged cache, never gathering a context: a block mask
built once per step from the block tables says which physical slots each token may read.
The default on CUDA, where the call is compiled to a Triton kernel; on CPU it is correct but
unfused (eager flex materialises scores over the cache), so TorchAttention stays the CPU default.
"""

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from herd.engine.attention import AttentionBackend, AttentionMetadata, store
from herd.model.quant import FP8, fp8_widen

_compiled_flex = None


def _flex():
    """flex_attention, compiled once per process on CUDA (eager elsewhere)."""
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


class FlexAttention(AttentionBackend):
    """All tokens of a step in one call: query token i of sequence s at position p reads physical
    slot j when j's block is at logical index m of s's block table and m * block_size + j's
    offset <= p. Shared prefix blocks are fine: the map is per sequence."""

    def forward(self, q, k, v, k_cache, v_cache, meta):
        store(k_cache, meta.slot_mapping, k)
        store(v_cache, meta.slot_mapping, v)
        mask = meta.backend_state.get("flex_mask")
        if mask is None:  # built by the first layer, reused by the others
            mask = meta.backend_state["flex_mask"] = self._block_mask(meta, k_cache.shape[0], q)
        hkv, d = k_cache.shape[2], k_cache.shape[3]
        keys = _widen(k_cache, q.dtype).view(1, -1, hkv, d).transpose(1, 2)
        vals = _widen(v_cache, q.dtype).view(1, -1, hkv, d).transpose(1, 2)
        fn = _flex() if q.is_cuda else flex_attention
        out = fn(q.transpose(0, 1)[None], keys, vals, block_mask=mask, enable_gqa=True)
        return out[0].transpose(0, 1)

    def _block_mask(self, meta: AttentionMetadata, num_blocks: int, q: torch.Tensor):
        dev, bs = q.device, self.block_size
        seqs = len(meta.query_lens)
        qlens = torch.tensor(meta.query_lens, device=dev)
        seq_of = torch.repeat_interleave(torch.arange(seqs, device=dev), qlens)  # per token
        ctx = torch.tensor(meta.seq_lens, device=dev)
        # absolute position of each query token: the last query_len positions of its context
        first = torch.cumsum(qlens, 0) - qlens
        tok = torch.arange(len(seq_of), device=dev)
        pos = ctx[seq_of] - qlens[seq_of] + (tok - first[seq_of])
        # logical index of each physical block in each sequence's table, -1 where absent
        logical = torch.full((seqs, num_blocks), -1, dtype=torch.long, device=dev)
        for s, ids in enumerate(_tables(meta, bs)):
            logical[s, ids] = torch.arange(len(ids), device=dev)

        def mask_mod(b, h, q_idx, kv_idx):
            m = logical[seq_of[q_idx], kv_idx // bs]
            return (m >= 0) & (m * bs + kv_idx % bs <= pos[q_idx])

        return create_block_mask(
            mask_mod, None, None, len(seq_of), num_blocks * bs, device=dev, BLOCK_SIZE=128
        )


def _tables(meta: AttentionMetadata, block_size: int) -> list[torch.Tensor]:
    """Each sequence's block ids in logical order (decodes from the padded table, trimmed)."""
    out = []
    if meta.num_decodes:
        lens = meta.seq_lens[: meta.num_decodes]
        rows = zip(meta.decode_block_table, lens, strict=True)
        out = [row[: -(-n // block_size)] for row, n in rows]
    return out + list(meta.prefill_block_ids)


def _widen(cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if cache.dtype != FP8:
        return cache
    wide, factor = fp8_widen(cache, dtype)
    return wide.mul_(factor) if factor != 1.0 else wide
