"""Paged attention behind one small interface, and a registry of backends.

The runner packs the step's tokens decodes first, then prefill chunks, and builds one
`AttentionMetadata`; the model calls `attend(layer, q, k, v)` and never sees the backend.
`TorchAttention` is the portable reference (plain PyTorch SDPA, CPU or GPU).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from herd.model.quant import FP8, fp8_widen, to_fp8


@dataclass
class AttentionMetadata:
    """Everything attention needs for one step, built once by the runner and passed to every layer:
    where each new token's K/V goes (slot mapping), which sequences decode and which prefill,
    their lengths and their block tables. Decodes come first."""

    slot_mapping: torch.Tensor  # [T] cache slot (block_id * block_size + offset) of each token
    num_decodes: int  # the first num_decodes sequences (and tokens) have query length 1
    query_lens: list[int]  # tokens computed this step, per sequence
    seq_lens: list[int]  # context length after this step, per sequence
    # per prefill sequence: the block ids its context needs (a device tensor, built once a step)
    prefill_block_ids: list[torch.Tensor]
    decode_block_table: torch.Tensor | None  # [num_decodes, max_blocks], padded with block 0
    decode_seq_lens: torch.Tensor | None  # [num_decodes]
    # what a backend derives once per step and reuses in every layer (FlexAttention's mask)
    backend_state: dict = field(default_factory=dict)

    @classmethod
    def from_tables(
        cls,
        tables: list[list[int]],
        query_lens: list[int],
        seq_lens: list[int],
        num_decodes: int,
        block_size: int,
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """A step given as plain lists (per sequence, decodes first: its block table, its tokens
        this step, its context after it), with the tensors the runner's InputBuffers would
        build: for tests and benchmarks that drive a backend directly."""
        bs, nd = block_size, num_decodes
        slots = [t[p // bs] * bs + p % bs for t, q, n in zip(tables, query_lens, seq_lens, strict=True)
                 for p in range(n - q, n)]  # fmt: skip
        width = max((len(t) for t in tables[:nd]), default=0)
        table = [t + [0] * (width - len(t)) for t in tables[:nd]]
        return cls(
            slot_mapping=torch.tensor(slots, device=device),
            num_decodes=nd,
            query_lens=list(query_lens),
            seq_lens=list(seq_lens),
            prefill_block_ids=[torch.tensor(t, device=device) for t in tables[nd:]],
            decode_block_table=torch.tensor(table, device=device) if nd else None,
            decode_seq_lens=torch.tensor(seq_lens[:nd], device=device) if nd else None,
        )


class AttentionBackend(ABC):
    """Writes this step's K/V into the paged cache, then attends each query token to its
    sequence's context (causally within the chunk)."""

    # Reads the cache in place through full-width decode tables, with no host work in a decode
    # step: a decode step through it can be captured as a CUDA graph (cuda_graphs.GraphedDecode).
    graph_safe = False

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size

    def describe(self) -> str:
        """The kernels this backend runs, for the start-up log."""
        return type(self).__name__

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, Hq, D]
        ...


class TorchAttention(AttentionBackend):
    """Portable backend. Decodes are batched: pages gathered with index_select and the query
    heads of each KV group folded into the query length (measured 2x faster than SDPA's
    enable_gqa on CPU, see shared/notes/fast-path.md). Prefill chunks run one sequence each."""

    def forward(self, q, k, v, k_cache, v_cache, meta):
        self._store(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            out[:nd] = self._decode(q[:nd], k_cache, v_cache, meta)
        if nd < len(meta.query_lens):
            self._prefill_chunks(q, k, v, k_cache, v_cache, meta, out)
        return out

    def _prefill_chunks(self, q, k, v, k_cache, v_cache, meta, out) -> None:
        """Every prefill chunk of the step (the rows after the decodes) into `out`, a sequence
        at a time."""
        start = nd = meta.num_decodes
        for i in range(nd, len(meta.query_lens)):
            ql, ctx = meta.query_lens[i], meta.seq_lens[i]
            sl = slice(start, start + ql)
            out[sl] = self._prefill(
                q[sl], k[sl], v[sl], k_cache, v_cache, meta.prefill_block_ids[i - nd], ctx
            )
            start += ql

    def _store(self, k, v, k_cache, v_cache, slots) -> None:
        store(k_cache, slots, k)
        store(v_cache, slots, v)

    def _decode(self, q, k_cache, v_cache, meta):
        b, hq, d = q.shape
        hkv = k_cache.shape[2]
        table = meta.decode_block_table
        length = table.shape[1] * self.block_size
        keys = gather(k_cache, table.flatten(), q.dtype).view(b, length, hkv, d).transpose(1, 2)
        vals = gather(v_cache, table.flatten(), q.dtype).view(b, length, hkv, d).transpose(1, 2)
        mask = torch.arange(length, device=q.device)[None, :] < meta.decode_seq_lens[:, None]
        mask = mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q.view(b, hkv, hq // hkv, d), keys, vals, mask)
        return out.reshape(b, hq, d)

    def _prefill(self, q, k, v, k_cache, v_cache, block_ids, ctx):
        ql = q.shape[0]
        if ctx == ql:  # nothing cached before this chunk: attend to the chunk itself
            mask, causal = None, True
        else:
            hkv, d = k_cache.shape[2], k_cache.shape[3]
            k = gather(k_cache, block_ids, q.dtype).view(-1, hkv, d)[:ctx]
            v = gather(v_cache, block_ids, q.dtype).view(-1, hkv, d)[:ctx]
            qpos = torch.arange(ctx - ql, ctx, device=q.device)
            mask = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None]
            causal = False
        # A batch of one ([1, H, T, D]): on CPU the 4-D call takes the flash kernel, the 3-D one
        # the math fallback (a 128-token bf16 prefill: 0.7 vs 1.3 ms).
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1)


def store(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """Writes x [T, Hkv, D] into cache slots. An fp8 cache holds e4m3 with a scale of 1 (as
    vLLM without calibrated scales): K/V values saturate at +-448, keep ~2 significant digits."""
    flat = cache.view(-1, *x.shape[1:])
    if cache.dtype == FP8:  # CPU has no fp8 index_copy_: move the bytes
        flat.view(torch.uint8).index_copy_(0, slots, to_fp8(x).view(torch.uint8))
    else:
        flat.index_copy_(0, slots, x)


def gather(cache: torch.Tensor, block_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The blocks `block_ids` of a cache, in the activation dtype."""
    if cache.dtype != FP8:
        return cache.index_select(0, block_ids)
    raw = cache.view(torch.uint8).index_select(0, block_ids).view(FP8)
    wide, factor = fp8_widen(raw, dtype)
    return wide.mul_(factor) if factor != 1.0 else wide
