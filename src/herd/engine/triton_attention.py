"""`TritonAttention`: paged attention in two Triton kernel launches a step, one over every decode
and one over every prefill chunk, each program reading its own sequence's blocks through the
block table (no gathered context, no work on other sequences' keys). The default on CUDA.
On CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1): how the tests check them.
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from herd.engine.attention import AttentionBackend, AttentionMetadata, store
from herd.model.quant import FP8

PREFILL_ROWS = 128  # query rows (tokens x heads of one KV group) per prefill program
KEY_TILE = 64  # keys per inner step
_kernel = None


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unusable(device: torch.device, kv_dtype: torch.dtype | None = None) -> str | None:
    """Why the kernels cannot run on `device` over a `kv_dtype` cache, or None: they need
    Triton, and a GPU or the interpreter; an fp8 cache needs fp8 conversions (Ada, Hopper)."""
    if not available():
        return "Triton is not installed (pip install triton)"
    if device.type != "cuda":
        if interpreting():
            return None
        return f"its kernels run on CUDA (or on the CPU under TRITON_INTERPRET=1), not {device}"
    if kv_dtype == FP8 and torch.cuda.get_device_capability(device) < (8, 9):
        return "an fp8 KV cache needs a GPU of compute capability 8.9 or later (Ada, Hopper)"
    return None


class TritonAttention(AttentionBackend):
    """Each program takes one KV head and a tile of one sequence's query tokens with all the
    query heads sharing that KV head (rows = tokens x group), so a key tile is read once for the
    group and never for another sequence. Decodes: one program per (sequence, KV head), indexed
    from the step's decode table and lengths alone, so a captured CUDA graph replays it. Prefill
    chunks: programs over tiles of `PREFILL_ROWS` rows, their map built once a step. Softmax in
    float32 (online, exp2); an fp8 cache is widened per key tile in registers."""

    graph_safe = True

    def describe(self) -> str:
        return "TritonAttention (paged decode + varlen prefill Triton kernels)"

    def forward(self, q, k, v, k_cache, v_cache, meta):
        store(k_cache, meta.slot_mapping, k)
        store(v_cache, meta.slot_mapping, v)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        nd, group = meta.num_decodes, q.shape[1] // k_cache.shape[2]
        if nd:
            table, lens = meta.decode_block_table, meta.decode_seq_lens
            self._launch(q[:nd], out[:nd], k_cache, v_cache, table, lens, None)
        if nd < len(meta.query_lens):
            plan = meta.backend_state.get("triton_prefill")
            if plan is None:  # built by the first layer, reused by the others
                plan = meta.backend_state["triton_prefill"] = _prefill_plan(meta, group, q.device)
            self._launch(q[nd:], out[nd:], k_cache, v_cache, plan.table, plan.ctx, plan)
        return out

    def _launch(self, q, out, k_cache, v_cache, table, ctx, plan) -> None:
        """One kernel launch: decode programs (`plan` None: program i is decode i, one token,
        context `ctx[i]`, table row i) or a prefill plan's programs (one per tile)."""
        q = q if q.stride(-1) == 1 else q.contiguous()
        hkv, d = k_cache.shape[2], k_cache.shape[3]
        group = q.shape[1] // hkv
        decode = plan is None
        rows = _rows(group, decode)
        wide = interpreting() or q.dtype == torch.float32  # the interpreter's bf16 dot is wrong
        seqs, firsts, ends = (ctx, ctx, ctx) if decode else (plan.seqs, plan.firsts, plan.ends)
        _get_kernel()[(q.shape[0] if decode else len(plan.seqs), hkv)](
            q, out, k_cache, v_cache, table, ctx, seqs, firsts, ends,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            *k_cache.stride()[:3], *v_cache.stride()[:3], table.stride(0),
            1.0 / math.sqrt(d) * math.log2(math.e),
            GROUP=group, HEAD_DIM=d, BLOCK_D=max(16, next_pow2(d)), BLOCK_SIZE=self.block_size,
            ROWS=rows, BLOCK_Q=1 if decode else rows // group, KEYS=KEY_TILE, DECODE=decode,
            WIDE=wide, PRECISION="ieee" if wide else "tf32",  # float32 exactly, not as TF32
            num_warps=4 if decode else 8,  # a prefill tile's 128 x head-size accumulator
        )  # fmt: skip


def _rows(group: int, decode: bool) -> int:
    """Query rows a program takes: a decode's group of heads (at least 16, tl.dot's least), or
    `PREFILL_ROWS` (whole tokens' groups of it)."""
    return max(16 if decode else PREFILL_ROWS, next_pow2(group))


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass
class PrefillPlan:
    """The prefill launch's inputs, built once a step: every prefill sequence's block table
    padded to one width and its context length; per program its sequence and first query row;
    per sequence the row after its last."""

    table: torch.Tensor
    ctx: torch.Tensor
    seqs: torch.Tensor
    firsts: torch.Tensor
    ends: torch.Tensor


def _prefill_plan(meta: AttentionMetadata, group: int, dev: torch.device) -> PrefillPlan:
    """The plan's integers go to the device in one copy (int32 views of one array)."""
    nd = meta.num_decodes
    qlens = np.asarray(meta.query_lens[nd:], dtype=np.int64)
    ends = np.cumsum(qlens)
    step = _rows(group, decode=False) // group  # tokens a program takes
    firsts = [np.arange(e - n, e, step) for n, e in zip(qlens, ends, strict=True)]
    seqs = np.repeat(np.arange(len(qlens)), [len(f) for f in firsts])
    ctx = np.asarray(meta.seq_lens[nd:], dtype=np.int64)
    host = np.concatenate([seqs, np.concatenate(firsts), ends, ctx]).astype(np.int32)
    ints = torch.from_numpy(host).to(dev, non_blocking=True)
    n, s = len(seqs), len(qlens)
    table = torch.nn.utils.rnn.pad_sequence(list(meta.prefill_block_ids), batch_first=True)
    return PrefillPlan(table, ints[-s:], ints[:n], ints[n : 2 * n], ints[2 * n : 2 * n + s])


def _get_kernel():
    """The kernel, defined on first use: Triton is imported only where this backend runs, and
    TRITON_INTERPRET is read when the kernel is defined."""
    global _kernel
    if _kernel is None:
        _kernel = _define_kernel()
    return _kernel


def _define_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def paged_attention(
        q_ptr, out_ptr, k_cache, v_cache, tables, ctx_lens, tile_seqs, tile_firsts, seq_ends,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_table,
        scale_log2,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, KEYS: tl.constexpr,
        DECODE: tl.constexpr, WIDE: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        tile, kvh = tl.program_id(0), tl.program_id(1)
        if DECODE:
            seq, first, end = tile, tile, tile + 1
        else:
            seq = tl.load(tile_seqs + tile)
            first = tl.load(tile_firsts + tile)
            end = tl.load(seq_ends + seq)
        ctx = tl.load(ctx_lens + seq)
        # row r: token first + r // GROUP, query head kvh * GROUP + r % GROUP
        r = tl.arange(0, ROWS)
        tok = first + r // GROUP
        valid = (r < BLOCK_Q * GROUP) & (tok < end)
        head = kvh * GROUP + r % GROUP
        pos = ctx - end + tok  # absolute position of the row's token
        d = tl.arange(0, BLOCK_D)
        dmask = d < HEAD_DIM
        q = tl.load(
            q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
            mask=valid[:, None] & dmask[None, :],
            other=0.0,
        )
        if WIDE:
            q = q.to(tl.float32)
        m = tl.full([ROWS], -1e30, tl.float32)  # finite: a row with no keys yields no NaN
        total = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
        last = tl.minimum(first + BLOCK_Q, end)  # one past the tile's last token
        table = tables + seq.to(tl.int64) * stride_table
        for start in range(0, ctx - end + last, KEYS):
            n = start + tl.arange(0, KEYS)
            inside = n < ctx - end + last
            block = tl.load(table + n // BLOCK_SIZE, mask=inside, other=0).to(tl.int64)
            at = n % BLOCK_SIZE
            kmask = inside[:, None] & dmask[None, :]
            k = tl.load(
                k_cache + block[:, None] * stride_kb + at[:, None] * stride_ks
                + kvh * stride_kh + d[None, :],
                mask=kmask, other=0.0,
            ).to(q.dtype)  # fmt: skip
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s = tl.where(valid[:, None] & (n[None, :] <= pos[:, None]), s, float("-inf"))
            top = tl.maximum(m, tl.max(s, 1))
            p = tl.exp2(s - top[:, None])
            alpha = tl.exp2(m - top)
            total = total * alpha + tl.sum(p, 1)
            v = tl.load(
                v_cache + block[:, None] * stride_vb + at[:, None] * stride_vs
                + kvh * stride_vh + d[None, :],
                mask=kmask, other=0.0,
            ).to(q.dtype)  # fmt: skip
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
            m = top
        acc = acc / tl.where(total > 0, total, 1.0)[:, None]  # padding rows have no keys
        tl.store(
            out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=valid[:, None] & dmask[None, :],
        )

    return paged_attention
