"""Builds and calls the C++ paged decode-attention kernel (`paged_decode.cpp`) on CPUs: compiled on
first use with the system compiler (g++, as inductor uses), cached under ~/.cache/herd/kernels/
by source, flags and CPU. It reads K/V straight through the block table, so no padded context is
copied out of the cache; OpenMP over sequences, float32 accumulation."""

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from herd.engine.attention import TorchAttention

log = logging.getLogger(__name__)

SOURCE = (Path(__file__).parent / "paged_decode.cpp").read_text()
FLAGS = [
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fno-math-errno",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=gnu++17",
]
SYMBOLS = {torch.float32: "herd_paged_decode_f32", torch.bfloat16: "herd_paged_decode_bf16"}
_lock = threading.Lock()
_lib: list = []  # [CDLL or None] once tried


def _cache_path(compiler: str) -> Path:
    try:
        cpu = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        cpu = ""
    key = hashlib.sha256("\0".join([SOURCE, compiler, *FLAGS, cpu]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("HERD_KERNEL_CACHE", Path.home() / ".cache/herd/kernels"))
    return root / f"paged_decode_{key}.so"


def _build() -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None or os.environ.get("HERD_CPU_KERNELS") == "0":
        return None
    path = _cache_path(compiler)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src, so = Path(tmp) / "k.cpp", Path(tmp) / "k.so"
            src.write_text(SOURCE)
            subprocess.run([compiler, *FLAGS, str(src), "-o", str(so)], check=True,
                           capture_output=True, timeout=300)  # fmt: skip
            os.replace(so, path)  # atomic: replicas building at once never see half a file
        log.info("built the CPU paged decode kernel: %s", path)
    return ctypes.CDLL(str(path))


def load_kernel() -> ctypes.CDLL | None:
    """The kernel library, built once per process (None if no compiler, `HERD_CPU_KERNELS=0`,
    or the build failed; the failure is logged and the caller stays on its torch path)."""
    with _lock:
        if not _lib:
            try:
                _lib.append(_build())
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("CPU paged decode kernel unavailable, using torch's: %s", exc)
                _lib.append(None)
        return _lib[0]


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


class CpuAttention(TorchAttention):
    """`TorchAttention` whose decodes run the C++ kernel (no padded context gathered); prefill
    chunks, and caches the kernel does not take (fp8, float16), stay on the torch path. Same
    outputs as `TorchAttention` within float32 rounding (bf16: one unit in the last place)."""

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        self.lib = load_kernel()

    def describe(self) -> str:
        kernel = "C++ paged decode kernel" if self.lib else "no C++ kernel: gather + SDPA"
        return f"{type(self).__name__} ({kernel}, prefill SDPA)"

    def _decode(self, q, k_cache, v_cache, meta):
        if self.lib is None or not supports(q, k_cache):
            return super()._decode(q, k_cache, v_cache, meta)
        table, lens = meta.decode_block_table, meta.decode_seq_lens
        return paged_decode(self.lib, q, k_cache, v_cache, table, lens)
