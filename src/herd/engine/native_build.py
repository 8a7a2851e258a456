"""Builds herd's C++ CPU kernels (`*.cpp` beside this file) into shared libraries with the system
compiler (g++, as inductor uses) on first use, cached under ~/.cache/herd/kernels/ by source,
flags and CPU, and loads them with ctypes. One library per source; a source may `#include`
another one here (the cache key covers every file it names)."""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
X86 = platform.machine().lower() in ("x86_64", "amd64")
FLAGS = [
    "-O3",
    "-march=native",  # aarch64's g++ takes it too
    *(["-mprefer-vector-width=512"] if X86 else []),  # x86 only: g++ elsewhere refuses it
    "-fno-math-errno",
    "-fno-trapping-math",  # lets GCC vectorise loops with comparisons (no kernel traps on FP)
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=gnu++17",
]
_lock = threading.Lock()
_libs: dict[tuple[str, tuple[str, ...]], ctypes.CDLL | None] = {}


def _sources(name: str) -> str:
    """The source and every file it #includes from this directory, for the cache key."""
    text = (HERE / name).read_text()
    included = re.findall(r'#include "([\w.]+)"', text)
    return "\0".join([text, *(_sources(inc) for inc in included)])


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    try:
        line = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def _cache_path(name: str, compiler: str, flags: list[str]) -> Path:
    cpu = " ".join(sorted(cpu_flags()))
    key = hashlib.sha256("\0".join([_sources(name), compiler, *flags, cpu]).encode())
    root = Path(os.environ.get("HERD_KERNEL_CACHE", Path.home() / ".cache/herd/kernels"))
    return root / f"{Path(name).stem}_{key.hexdigest()[:16]}.so"


def _build(name: str, flags: list[str]) -> ctypes.CDLL | None:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None or os.environ.get("HERD_CPU_KERNELS") == "0":
        return None
    path = _cache_path(name, compiler, flags)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            so = Path(tmp) / "k.so"
            cmd = [compiler, *flags, f"-I{HERE}", str(HERE / name), "-o", str(so)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            os.replace(so, path)  # atomic: replicas building at once never see half a file
        log.info("built the CPU kernel %s: %s", name, path)
    return ctypes.CDLL(str(path))


def march() -> str:
    """The target the kernels are built for: native, or what `HERD_CPU_MARCH` names (x86-64-v3
    builds what a CPU with AVX2 but no AVX-512 runs, so it can be tested and measured here)."""
    return os.environ.get("HERD_CPU_MARCH", "native")


def default_flags() -> list[str]:
    """FLAGS with `-march=` the target `march()` names."""
    return [f"-march={march()}" if f == "-march=native" else f for f in FLAGS]


def load_library(name: str, flags: list[str] | None = None) -> ctypes.CDLL | None:
    """The library built from `name` (a .cpp beside this module), built once per process and
    flag set (`default_flags()` unless given). None if there is no compiler,
    `HERD_CPU_KERNELS=0`, or the build failed: the failure is logged and callers stay on their
    torch path."""
    flags = default_flags() if flags is None else flags
    key = (name, tuple(flags))
    with _lock:
        if key not in _libs:
            try:
                _libs[key] = _build(name, flags)
            except (OSError, subprocess.SubprocessError) as exc:
                detail = getattr(exc, "stderr", b"") or b""
                log.warning("CPU kernel %s unavailable, using torch: %s %s", name, exc,
                            detail.decode(errors="replace")[-2000:])  # fmt: skip
                _libs[key] = None
        return _libs[key]
