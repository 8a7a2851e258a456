"""Run a benchmark as on an older x86 CPU (`tests/emulated_cpu.py`'s CPUs: `avx2`, AVX2 without
AVX-512; `avx512`, AVX-512 without BF16), on a host that has what that CPU has:

    .venv/bin/python benchmarks/emulate_cpu.py avx2 benchmarks/bench_offline.py --dtype bfloat16

herd's kernels are built for that -march, the runner sees /proc/cpuinfo without the newer flags,
torch's oneDNN / MKL / ATen are held to that ISA. The speeds are those code paths' on this CPU."""

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    os.environ["HERD_EMULATED_CPU"] = sys.argv[1]
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    import tests.emulated_cpu  # noqa: F401  (applies the emulation on import)

    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
