"""`FlexAttention`: every query token of a step (decodes and prefill chunks of all sequences) in
one `flex_attention` call over the whole paged cache, never gathering a context: a block mask
built once per step from the block tables says which physical slots each token may read.
The default on CUDA, where the call is compiled to a Triton kernel; on CPU it is correct but
unfused (eager flex materialises scores over the cache), so TorchAttention stays the CPU default.
"""

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from herd.engine.attention import AttentionBackend, AttentionMetadata, store
from herd.model.quant import FP8, fp8_widen

_compiled_flex = None
Q_BLOCK = 128  # flex's default tile of query tokens


def _flex():
    """flex_attention, compiled once per process on CUDA (eager elsewhere). Shapes are left to
    dynamo's automatic dynamism: a step's token count changes every prefill, and a recompile per
    shape would soon pass the recompile limit and fall back to eager flex."""
    global _compiled_flex
    if _compiled_flex is None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


class FlexAttention(AttentionBackend):
    """All tokens of a step in one call: query token i of sequence s at position p reads physical
    slot j when j's block is at logical index m of s's block table and m * block_size + j's
    offset <= p. Shared prefix blocks are fine: the map is per sequence. The block mask is built
    on the device from the tables alone (no host round trip, fixed shapes for a decode step), so
    a decode step with it can be captured in a CUDA graph."""

    graph_safe = True

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

    def _block_mask(self, meta: AttentionMetadata, num_blocks: int, q: torch.Tensor) -> BlockMask:
        seq_of, pos, table = _token_rows(meta, q.device)
        bs, t = self.block_size, q.shape[0]
        # logical index of each physical block in each sequence's table, -1 where absent; the
        # table's unused tail (past the context) lands in a dummy last column
        m = torch.arange(table.shape[1], device=q.device, dtype=torch.int32)
        ctx = pos.new_zeros(table.shape[0]).scatter_reduce_(0, seq_of, pos, "amax")
        used = m[None, :].long() * bs <= ctx[:, None]
        logical = torch.full(
            (table.shape[0], num_blocks + 1), -1, dtype=torch.int32, device=q.device
        )
        logical.scatter_(1, torch.where(used, table, num_blocks), m.expand_as(table).contiguous())

        def mask_mod(b, h, q_idx, kv_idx):
            lm = logical[seq_of[q_idx], kv_idx // bs]
            return (lm >= 0) & (lm * bs + kv_idx % bs <= pos[q_idx])

        kv_block = 128 if 128 % bs == 0 else bs
        num_q, num_kv = -(-t // Q_BLOCK), -(-num_blocks * bs // kv_block)
        # Which (query tile, key tile) pairs hold any allowed pair: every block a token may
        # read, causally; mask_mod refines inside the tiles.
        reach = m[None, :].long() * bs <= pos[:, None]  # [T, W]
        tile = torch.arange(t, device=q.device)[:, None] // Q_BLOCK * num_kv
        tile = tile + table[seq_of] * bs // kv_block
        dense = torch.zeros(num_q * num_kv + 1, dtype=torch.int32, device=q.device)
        dense.index_fill_(0, torch.where(reach, tile, num_q * num_kv).flatten(), 1)
        dense = dense[:-1].view(1, 1, num_q, num_kv)
        order = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
        return BlockMask.from_kv_blocks(
            dense.sum(-1, dtype=torch.int32),
            order,
            BLOCK_SIZE=(Q_BLOCK, kv_block),
            mask_mod=mask_mod,
            seq_lengths=(t, num_blocks * bs),
        )  # q-side indices too (backward's), as create_block_mask builds them: the same object


def _token_rows(meta: AttentionMetadata, dev: torch.device):
    """Per query token its sequence and absolute position, and every sequence's block table
    padded to one width. A step of decodes alone reads only the metadata's tensors (what a
    captured graph replays); a step with prefill chunks copies its lengths over once."""
    nd = meta.num_decodes
    if nd == len(meta.query_lens):
        seq_of = torch.arange(nd, device=dev)
        return seq_of, meta.decode_seq_lens - 1, meta.decode_block_table
    qlens = torch.tensor(meta.query_lens).to(dev, non_blocking=True)  # no stream sync
    t = sum(meta.query_lens)
    seq_of = torch.repeat_interleave(torch.arange(len(qlens), device=dev), qlens, output_size=t)
    ctx = torch.tensor(meta.seq_lens).to(dev, non_blocking=True)
    first = torch.cumsum(qlens, 0) - qlens
    pos = ctx[seq_of] - qlens[seq_of] + (torch.arange(t, device=dev) - first[seq_of])
    rows = list(meta.decode_block_table) if nd else []
    table = torch.nn.utils.rnn.pad_sequence(rows + list(meta.prefill_block_ids), batch_first=True)
    return seq_of, pos, table


def _widen(cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if cache.dtype != FP8:
        return cache
    wide, factor = fp8_widen(cache, dtype)
    return wide.mul_(factor) if factor != 1.0 else wide
