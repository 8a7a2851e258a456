"""Calls the C++ paged decode-attention kernel (`paged_decode.cpp`, built by `native_build`) on
CPUs. It reads K/V straight through the block table, so no padded context is copied out of the
cache; OpenMP over sequences, float32 accumulation."""

import ctypes

import torch

from herd.engine import cpu_paged_prefill
from herd.engine.attention import TorchAttention
from herd.engine.native_build import load_library

SYMBOLS = {torch.float32: "herd_paged_decode_f32", torch.bfloat16: "herd_paged_decode_bf16"}


def load_kernel() -> ctypes.CDLL | None:
    """The kernel library, built once per process (None if no compiler, `HERD_CPU_KERNELS=0`,
    or the build failed; the caller stays on its torch path)."""
    return load_library("paged_decode.cpp")


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel handles these tensors (CPU, float32 or bfloat16, same dtype)."""
    return (
        q.device.type == "cpu"
        and q.dtype in SYMBOLS
        and k_cache.dtype == q.dtype
        and k_cache.is_contiguous()
        and q.shape[1] % k_cache.shape[2] == 0
    )


def paged_decode(
    lib: ctypes.CDLL,
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,
    table: torch.Tensor,  # [B, width] int64 block ids
    lens: torch.Tensor,  # [B] int64 context lengths
) -> torch.Tensor:
    """Attention of one query token per sequence over its first lens[b] cached tokens."""
    q = q.contiguous()
    table, lens = table.contiguous().to(torch.int64), lens.contiguous().to(torch.int64)
    b, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    ptr = ctypes.c_void_p
    getattr(lib, SYMBOLS[q.dtype])(
        ptr(q.data_ptr()), ptr(k_cache.data_ptr()), ptr(v_cache.data_ptr()),
        ptr(table.data_ptr()), ptr(lens.data_ptr()), ptr(out.data_ptr()),
        ctypes.c_int64(b), ctypes.c_int64(hq), ctypes.c_int64(hkv), ctypes.c_int64(d),
        ctypes.c_int64(bs), ctypes.c_int64(table.shape[1]), ctypes.c_float(d**-0.5),
        ctypes.c_int(torch.get_num_threads()),
    )  # fmt: skip
    return out


def _rows_contiguous(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Each token's heads one contiguous row (any stride between tokens), on the CPU."""
    return all(
        x.device.type == "cpu" and x.shape[0] > 0 and x.stride(2) == 1 and x.stride(1) == x.shape[2]
        for x in (k, v)
    )


class CpuAttention(TorchAttention):
    """`TorchAttention` whose decodes, and on AVX-512 or AVX2 CPUs prefill chunks, run C++ kernels that
    read the cache through the block tables (no padded context gathered, all of a step's chunks
    in one call); caches the kernels do not take (fp8, float16) stay on the torch path. Same
    outputs as `TorchAttention` within float32 rounding (bf16: one unit in the last place)."""

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        self.lib = load_kernel()
        self.prefill_lib = cpu_paged_prefill.load_kernel()

    def describe(self) -> str:
        decode = "C++ paged decode kernel" if self.lib else "no C++ kernel: gather + SDPA"
        prefill = "C++ paged prefill kernel" if self.prefill_lib else "prefill SDPA"
        return f"{type(self).__name__} ({decode}, {prefill})"

    def _store(self, k, v, k_cache, v_cache, slots) -> None:
        if not (self.lib is not None and _rows_contiguous(k, v) and k_cache.dtype == k.dtype):
            return super()._store(k, v, k_cache, v_cache, slots)
        slots = slots.contiguous().to(torch.int64)
        size, ptr = k.element_size(), ctypes.c_void_p
        self.lib.herd_store_kv(
            ptr(k.data_ptr()), ptr(v.data_ptr()), ctypes.c_int64(k.stride(0) * size),
            ctypes.c_int64(v.stride(0) * size), ptr(k_cache.data_ptr()), ptr(v_cache.data_ptr()),
            ptr(slots.data_ptr()), ctypes.c_int64(k.shape[0]), ctypes.c_int64(k[0].numel() * size),
        )  # fmt: skip

    def _decode(self, q, k_cache, v_cache, meta):
        if self.lib is None or not supports(q, k_cache):
            return super()._decode(q, k_cache, v_cache, meta)
        table, lens = meta.decode_block_table, meta.decode_seq_lens
        return paged_decode(self.lib, q, k_cache, v_cache, table, lens)

    def _prefill_chunks(self, q, k, v, k_cache, v_cache, meta, out) -> None:
        lib = self.prefill_lib
        if lib is None or not (cpu_paged_prefill.supports(q, k_cache) and out.is_contiguous()):
            return super()._prefill_chunks(q, k, v, k_cache, v_cache, meta, out)
        cpu_paged_prefill.paged_prefill(lib, q, k_cache, v_cache, meta, out)
