"""pytest plugin (`-p tests.emulated_cpu`, the CPU named by HERD_EMULATED_CPU): run tests as on an
older x86 CPU, on a host that has everything that CPU has (elsewhere it changes nothing):
- `avx2`: AVX2 and FMA, no AVX-512 (x86-64-v3): most cloud CPUs before Ice Lake / Zen 4;
- `avx512`: AVX-512 without AVX512-BF16, VNNI or AMX (skylake-avx512): Skylake-SP, Cascade Lake,
  and (for herd's kernels) Ice Lake.
herd's kernels are built for that `-march`, the runner sees /proc/cpuinfo without the newer flags
(so `dtype=auto` is float32, as there), and torch's oneDNN, MKL and ATen kernels are held to that
ISA. `make test` runs the CPU kernel tests under each: those paths are what most cloud CPUs run,
and they broke unseen (a bf16 replica died at start-up in oneDNN on AVX2)."""

import os
import tempfile
from dataclasses import dataclass

from herd.engine import native_build


@dataclass(frozen=True)
class EmulatedCpu:
    needs: frozenset[str]  # host flags the target's code runs on
    march: str
    onednn_isa: str
    mkl: str
    aten: str
    keeps: tuple[str, ...]  # the avx512* flags it has; every other avx512* and amx* is hidden

    def flags(self, host: frozenset[str]) -> frozenset[str]:
        newer = [f for f in host if f.startswith(("avx512", "amx")) and f not in self.keeps]
        return host - frozenset(newer)


CPUS = {
    "avx2": EmulatedCpu(frozenset({"avx2", "fma"}), "x86-64-v3", "AVX2", "AVX2", "avx2", ()),
    "avx512": EmulatedCpu(
        frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}),
        "skylake-avx512",
        "AVX512_CORE",
        "AVX512",
        "avx512",
        ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"),
    ),  # fmt: skip
}

_cpu = CPUS[os.environ.get("HERD_EMULATED_CPU", "avx2")]
_host = native_build.cpu_flags()
if native_build.X86 and _cpu.needs <= _host:
    os.environ.update(
        HERD_CPU_MARCH=_cpu.march,
        ONEDNN_MAX_CPU_ISA=_cpu.onednn_isa,
        DNNL_MAX_CPU_ISA=_cpu.onednn_isa,
        MKL_ENABLE_INSTRUCTIONS=_cpu.mkl,
        ATEN_CPU_CAPABILITY=_cpu.aten,
        # inductor's cache key misses ATEN_CPU_CAPABILITY: sharing native runs' cache gave garbage
        TORCHINDUCTOR_CACHE_DIR=os.path.join(tempfile.gettempdir(), f"herd-inductor-{_cpu.aten}"),
    )
    _flags = _cpu.flags(_host)
    native_build.cpu_flags = lambda: _flags

    import herd.engine.runner

    herd.engine.runner.cpu_flags = native_build.cpu_flags
