"""pytest plugin (`-p tests.avx2_cpu`): run tests as on a CPU with AVX2 but no AVX-512, on a host
that has AVX2 (elsewhere it changes nothing). herd's kernels are built for x86-64-v3, the runner
sees /proc/cpuinfo without its avx512*/amx* flags (so `dtype=auto` is float32, as there), and
torch's oneDNN, MKL and ATen kernels are held to AVX2. `make test` runs the CPU kernel tests
under it: that path is what most cloud CPUs before Ice Lake / Zen 4 run, and it broke unseen
(a bf16 replica died at start-up in oneDNN)."""

import os
import tempfile

from herd.engine import native_build

_host = native_build.cpu_flags()
if native_build.X86 and {"avx2", "fma"} <= _host:
    os.environ.update(
        HERD_CPU_MARCH="x86-64-v3",
        ONEDNN_MAX_CPU_ISA="AVX2",
        DNNL_MAX_CPU_ISA="AVX2",
        MKL_ENABLE_INSTRUCTIONS="AVX2",
        ATEN_CPU_CAPABILITY="avx2",
        # inductor's cache key misses ATEN_CPU_CAPABILITY: sharing native runs' cache gave garbage
        TORCHINDUCTOR_CACHE_DIR=os.path.join(tempfile.gettempdir(), "herd-inductor-avx2"),
    )
    _avx2 = frozenset(f for f in _host if not f.startswith(("avx512", "amx")))
    native_build.cpu_flags = lambda: _avx2

    import herd.engine.runner

    herd.engine.runner.cpu_flags = native_build.cpu_flags
