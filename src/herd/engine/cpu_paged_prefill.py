"""Calls the C++ paged prefill-attention kernel (`paged_prefill.cpp`, built by `native_build`) on
CPUs: every prefill chunk of a step in one call, each reading its context through its block table
(prefix hits and earlier chunks included), where the torch path runs SDPA a sequence at a time
(and with a cached prefix, a masked SDPA over a gathered copy of the context)."""

import ctypes

import torch

from herd.engine.attention import AttentionMetadata
from herd.engine.native_build import load_library

SYMBOLS = {torch.float32: "herd_paged_prefill_f32", torch.bfloat16: "herd_paged_prefill_bf16"}


def load_kernel() -> ctypes.CDLL | None:
    """The kernel library, or None where it cannot run: no compiler, `HERD_CPU_KERNELS=0`, a
    failed build, or a CPU with neither AVX-512 nor AVX2 (the library then has no symbols)."""
    lib = load_library("paged_prefill.cpp")
    return lib if lib is not None and hasattr(lib, SYMBOLS[torch.float32]) else None


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel takes these tensors: CPU, float32 or bfloat16 throughout, a contiguous
    cache, each token's query heads one contiguous row."""
    return (
        q.device.type == "cpu"
        and q.dtype in SYMBOLS
        and k_cache.dtype == q.dtype
        and k_cache.is_contiguous()
        and q.stride(2) == 1
        and q.stride(1) == q.shape[2]
        and q.shape[1] % k_cache.shape[2] == 0
    )


def chunk_table(meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's prefill chunks as the kernel reads them, built once a step (every layer reuses
    it): per chunk (first token in q, query tokens, context after the step, offset of its blocks),
    and all chunks' block ids one after another."""
    state = meta.backend_state
    if "cpu_prefill" not in state:
        nd, rows, token, offset = meta.num_decodes, [], meta.num_decodes, 0
        for i, blocks in enumerate(meta.prefill_block_ids, start=nd):
            rows.append((token, meta.query_lens[i], meta.seq_lens[i], offset))
            token, offset = token + meta.query_lens[i], offset + blocks.numel()
        tables = torch.cat([b.to(torch.int64) for b in meta.prefill_block_ids])
        state["cpu_prefill"] = (torch.tensor(rows, dtype=torch.int64), tables)
    return state["cpu_prefill"]


def paged_prefill(
    lib: ctypes.CDLL,
    q: torch.Tensor,  # [T, Hq, D]: the whole step's queries, decodes first
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], this step's K/V already stored
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    out: torch.Tensor,  # [T, Hq, D]: the prefill rows (after the decodes) are written
) -> None:
    """Causal attention of every prefill chunk of the step over its cached context."""
    chunks, tables = chunk_table(meta)
    hq, d = q.shape[1], q.shape[2]
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    getattr(lib, SYMBOLS[q.dtype])(
        ptr(q.data_ptr()), i64(q.stride(0)), ptr(k_cache.data_ptr()), ptr(v_cache.data_ptr()),
        ptr(tables.data_ptr()), ptr(chunks.data_ptr()), i64(chunks.shape[0]),
        ptr(out.data_ptr()), i64(out.stride(0)), i64(hq), i64(hkv), i64(d), i64(bs),
        ctypes.c_float(d**-0.5), ctypes.c_int(torch.get_num_threads()),
    )  # fmt: skip
