"""`TritonAttention`: paged attention in two Triton kernel launches a step, one over every decode
and one over every prefill chunk, each program reading its own sequence's blocks through the
block table (no gathered context, no work on other sequences' keys). The default on CUDA.
On CPU the kernels (triton_kernels.py) run under Triton's interpreter (TRITON_INTERPRET=1): how
the tests check them.
"""

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from herd.engine.attention import AttentionBackend, AttentionMetadata, store
from herd.model.quant import FP8, FP8_MAX

PREFILL_ROWS = 128  # query rows (tokens x heads of one KV group) per prefill program
KEY_TILE = 64  # keys per inner step
MAX_SPLITS = 16  # key ranges a decode may be split into
INTERPRETER_SMS = 4  # "multiprocessors" under the interpreter: small batches split, as on a GPU


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unusable(device: torch.device) -> str | None:
    """Why the kernels cannot run on `device`, or None: they need Triton, and a GPU or the
    interpreter. (Any cache dtype, any CUDA GPU: an fp8 cache is read as bytes.)"""
    if not available():
        return "Triton is not installed (pip install triton)"
    if device.type != "cuda" and not interpreting():
        return f"its kernels run on CUDA (or on the CPU under TRITON_INTERPRET=1), not {device}"
    return None


def writes_fp8(device: torch.device) -> bool:
    """Whether `store_kv` may cast to e4m3 on `device` (Ada, Hopper and later; elsewhere the
    torch store writes an fp8 cache)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


class TritonAttention(AttentionBackend):
    """Each program takes one KV head and a tile of one sequence's query tokens with all the
    query heads sharing that KV head (rows = tokens x group), so a key tile is read once for the
    group and never for another sequence. Decodes: one program per (sequence, KV head), indexed
    from the step's decode table and lengths alone, so a captured CUDA graph replays it; a batch
    too small to fill the GPU splits each decode's keys into ranges, merged by a second launch
    (flash-decoding). Prefill chunks: programs over tiles of `PREFILL_ROWS` rows, their map
    built once a step. Softmax in float32 (online, exp2); an fp8 cache is read as bytes and
    widened per key tile in registers."""

    graph_safe = True

    def describe(self) -> str:
        return "TritonAttention (paged decode, split for small batches, + varlen prefill kernels)"

    def forward(self, q, k, v, k_cache, v_cache, meta):
        _store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        nd, hkv = meta.num_decodes, k_cache.shape[2]
        if nd:
            table, lens = meta.decode_block_table, meta.decode_seq_lens
            splits = decode_splits(nd, hkv, q.device)
            self._launch(q[:nd], out[:nd], k_cache, v_cache, table, lens, None, splits)
        if nd < len(meta.query_lens):
            plan = meta.backend_state.get("triton_prefill")
            if plan is None:  # built by the first layer, reused by the others
                group = q.shape[1] // hkv
                plan = meta.backend_state["triton_prefill"] = _prefill_plan(meta, group, q.device)
            self._launch(q[nd:], out[nd:], k_cache, v_cache, plan.table, plan.ctx, plan, 1)
        return out

    def _launch(self, q, out, k_cache, v_cache, table, ctx, plan, splits: int) -> None:
        """One kernel launch (two for split decodes): decode programs (`plan` None: program i is
        decode i, one token, context `ctx[i]`, table row i) or a prefill plan's programs."""
        q = q if q.stride(-1) == 1 else q.contiguous()
        (t, hq, d), hkv = q.shape, k_cache.shape[2]
        group = hq // hkv
        decode = plan is None
        rows = _rows(group, decode)
        wide = interpreting() or q.dtype == torch.float32  # the interpreter's bf16 dot is wrong
        seqs, firsts, ends = (ctx, ctx, ctx) if decode else (plan.seqs, plan.firsts, plan.ends)
        fp8 = k_cache.dtype == FP8
        if fp8:  # read as bytes: see triton_kernels.widen
            k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
        part_out = part_lse = out  # unused unless split
        if splits > 1:
            part_out = torch.empty((t, hq, splits, d), dtype=torch.float32, device=q.device)
            part_lse = torch.empty((t, hq, splits), dtype=torch.float32, device=q.device)
        grid = (t if decode else len(plan.seqs), hkv, splits)
        kern = kernels()
        kern.paged_attention[grid](
            q, out, part_out, part_lse, k_cache, v_cache, table, ctx, seqs, firsts, ends,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            *k_cache.stride()[:3], *v_cache.stride()[:3], table.stride(0),
            1.0 / math.sqrt(d) * math.log2(math.e),
            GROUP=group, HEAD_DIM=d, BLOCK_D=max(16, next_pow2(d)), BLOCK_SIZE=self.block_size,
            ROWS=rows, BLOCK_Q=1 if decode else rows // group, KEYS=KEY_TILE, DECODE=decode,
            SPLITS=splits, WIDE=wide, PRECISION="ieee" if wide else "tf32",  # not as TF32
            FP8_BITS=fp8,
            num_warps=4 if decode else 8,  # a prefill tile's 128 x head-size accumulator
        )  # fmt: skip
        if splits > 1:
            kern.merge_splits[(t, hq)](
                part_out, part_lse, out, out.stride(0), out.stride(1), SPLITS=splits,
                BLOCK_S=next_pow2(splits), HEAD_DIM=d, BLOCK_D=max(16, next_pow2(d)),
            )  # fmt: skip


def decode_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Key ranges per decode: enough programs to fill every multiprocessor twice where batch x
    KV heads does not. A function of the batch alone, not of the contexts, so a CUDA graph's
    bucket fixes it; a range with no keys (a short context) costs its program an early exit."""
    return max(1, min(MAX_SPLITS, 2 * _multiprocessors(device) // (batch * kv_heads)))


def kernels():
    """The kernel module, imported on first use (it imports Triton)."""
    from herd.engine import triton_kernels

    return triton_kernels


def _multiprocessors(device: torch.device) -> int:
    return _gpu_multiprocessors(device) if device.type == "cuda" else INTERPRETER_SMS


@functools.cache
def _gpu_multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _rows(group: int, decode: bool) -> int:
    """Query rows a program takes: a decode's group of heads (at least 16, tl.dot's least), or
    `PREFILL_ROWS` (whole tokens' groups of it)."""
    return max(16 if decode else PREFILL_ROWS, next_pow2(group))


def _store_kv(k, v, k_cache, v_cache, slots) -> None:
    """One launch for both rows of every token (`attention.store` takes 2-6 torch kernels);
    rows whose heads are not contiguous, a cache not flat per slot, or an fp8 cache on a GPU
    without e4m3 casts go through `store`."""
    t, hkv, d = k.shape
    flat = all(x.stride(2) == 1 and x.stride(1) == d for x in (k, v))
    per_slot = all(
        c.stride(1) == hkv * d and c.stride(0) == c.shape[1] * hkv * d for c in (k_cache, v_cache)
    )
    if not (flat and per_slot) or (k_cache.dtype == FP8 and not writes_fp8(k.device)):
        store(k_cache, slots, k)
        store(v_cache, slots, v)
        return
    kernels().store_kv[(t,)](
        k, v, k_cache, v_cache, slots, k.stride(0), v.stride(0), k_cache.stride(1),
        v_cache.stride(1), FP8_MAX, ROW=hkv * d, BLOCK=next_pow2(hkv * d),
        FP8_CACHE=k_cache.dtype == FP8,
    )  # fmt: skip


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
    """The plan's integers go to the device in one copy: int32 views of one array, each starting
    16-byte aligned (Triton specialises a kernel on its pointers' alignment: unaligned views
    would compile new variants as step sizes change)."""
    nd = meta.num_decodes
    qlens = np.asarray(meta.query_lens[nd:], dtype=np.int64)
    ends = np.cumsum(qlens)
    step = _rows(group, decode=False) // group  # tokens a program takes
    firsts = [np.arange(e - n, e, step) for n, e in zip(qlens, ends, strict=True)]
    seqs = np.repeat(np.arange(len(qlens)), [len(f) for f in firsts])
    ctx = np.asarray(meta.seq_lens[nd:], dtype=np.int64)
    parts = [seqs, np.concatenate(firsts), ends, ctx]
    starts = np.cumsum([0] + [-(-len(p) // 4) * 4 for p in parts])  # 4 int32 = 16 bytes
    host = np.zeros(starts[-1], dtype=np.int32)
    for p, at in zip(parts, starts, strict=False):
        host[at : at + len(p)] = p
    ints = torch.from_numpy(host).to(dev, non_blocking=True)
    seqs, firsts, ends, ctx = (ints[a : a + len(p)] for p, a in zip(parts, starts, strict=False))
    table = torch.nn.utils.rnn.pad_sequence(list(meta.prefill_block_ids), batch_first=True)
    return PrefillPlan(table, ctx, seqs, firsts, ends)
