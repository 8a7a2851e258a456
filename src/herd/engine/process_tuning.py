"""Process-level CPU tuning, applied before torch loads: tcmalloc as the allocator, Intel's
OpenMP runtime (libiomp5) in place of GNU's, optionally OpenMP threads bound to cores. These
only take effect at exec time (LD_PRELOAD), so `maybe_reexec` re-executes the process once with
them set; `herd replica` calls it first thing. `HERD_PROCESS_TUNING` chooses the parts
(unset: `DEFAULT_PARTS`; `0` / `off`: none; else a comma list of `PARTS`)."""

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "HERD_PROCESS_TUNING"
# Set in the re-executed process: what was applied (and the guard against re-executing again).
APPLIED_ENV = "HERD_PROCESS_TUNED"
PARTS = ("tcmalloc", "iomp", "bind")
DEFAULT_PARTS = ("tcmalloc", "iomp")
# Where the libraries are looked for after the venv's own lib/ (pip's intel-openmp puts
# libiomp5.so there) and ~/.cache/herd/lib (for a tcmalloc unpacked without root).
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
LIBS = {"tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"), "iomp": ("libiomp5.so",)}
# vLLM's CPU worker sets these with libiomp5: a thread sleeps 1 ms after a parallel region
# (instead of spinning 200 ms, which a shared or small machine pays for), no low-power pause,
# and distributed barriers.
IOMP_ENV = {
    "KMP_BLOCKTIME": "1",
    "KMP_TPAUSE": "0",
    "KMP_FORKJOIN_BARRIER_PATTERN": "dist,dist",
    "KMP_PLAIN_BARRIER_PATTERN": "dist,dist",
    "KMP_REDUCTION_BARRIER_PATTERN": "dist,dist",
}
# tcmalloc reports every allocation over 1 GiB on stderr; the CPU KV pool is one.
TCMALLOC_ENV = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
BIND_ENV = {
    "iomp": {"KMP_AFFINITY": "granularity=fine,compact,1,0"},
    "gomp": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
}


@dataclass
class Tuning:
    """What a process should be started with: libraries to preload and environment variables
    (never overriding what the caller already set), and a line saying so for the log."""

    preload: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def describe(self) -> str:
        done = ", ".join(self.applied) or "nothing"
        return done + (f" (not found: {', '.join(self.missing)})" if self.missing else "")


def requested_parts(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The parts `HERD_PROCESS_TUNING` asks for; unknown names are a ValueError naming them."""
    raw = environ.get(ENV)
    if raw is None:
        return DEFAULT_PARTS
    if raw.strip().lower() in ("", "0", "off", "none", "false"):
        return ()
    parts = tuple(p.strip().lower() for p in raw.split(",") if p.strip())
    if parts == ("all",):
        return PARTS
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"{ENV}: unknown part(s) {unknown}; choose from {list(PARTS)} or 0")
    return parts


def find_library(part: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """The first existing file for `part` (tcmalloc or iomp), or None."""
    dirs = (*extra_dirs, str(Path(sys.prefix) / "lib"), str(Path.home() / ".cache/herd/lib"))
    for d in (*dirs, *LIB_DIRS):
        for name in LIBS[part]:
            path = Path(d) / name
            if path.is_file():
                return str(path)
    return None


def plan(parts: tuple[str, ...], environ: Mapping[str, str]) -> Tuning:
    """The preloads and variables for `parts`, from the libraries this machine has."""
    t = Tuning()
    for part in ("tcmalloc", "iomp"):
        if part not in parts:
            continue
        lib = find_library(part)
        if lib is None:
            t.missing.append(part)
            continue
        if lib not in environ.get("LD_PRELOAD", ""):
            t.preload.append(lib)
        t.applied.append(f"{part} ({lib})")
        t.env.update(IOMP_ENV if part == "iomp" else TCMALLOC_ENV)
    if "bind" in parts:
        runtime = "iomp" if any("libiomp5" in p for p in t.preload) else "gomp"
        t.env.update(BIND_ENV[runtime])
        t.applied.append(f"threads bound to cores ({runtime})")
    t.env = {k: v for k, v in t.env.items() if k not in environ}  # the caller's settings win
    return t


def tuned_environ(parts: tuple[str, ...], environ: Mapping[str, str]) -> tuple[dict, Tuning]:
    """A copy of `environ` with `parts` applied (LD_PRELOAD extended, variables added)."""
    t = plan(parts, environ)
    env = dict(environ)
    env.update(t.env)
    if t.preload:
        env["LD_PRELOAD"] = ":".join([*t.preload, *filter(None, [environ.get("LD_PRELOAD")])])
    env[APPLIED_ENV] = t.describe()
    return env, t


def maybe_reexec() -> None:
    """Re-executes this process once with the requested tuning, unless it already runs tuned,
    nothing applies, or this is not Linux; any failure leaves the process as it is. Call it
    before torch is imported (the preloads replace libraries torch would load)."""
    if APPLIED_ENV in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        env, t = tuned_environ(requested_parts(os.environ), os.environ)
    except ValueError as exc:
        print(f"herd: {exc}; starting untuned", file=sys.stderr)
        return
    if not t.preload and not t.env:
        os.environ[APPLIED_ENV] = t.describe()
        return
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # the process goes on untuned
        print(f"herd: could not re-execute with process tuning: {exc}", file=sys.stderr)


def preload_hint() -> str | None:
    """For a process herd did not start itself (an offline `LLM` in someone's program): the
    `LD_PRELOAD=...` that would give it the tuning, when this machine has libraries it lacks."""
    if APPLIED_ENV in os.environ or not sys.platform.startswith("linux"):
        return None
    try:
        t = plan(requested_parts(os.environ), os.environ)
    except ValueError:
        return None
    return "LD_PRELOAD=" + ":".join(t.preload) if t.preload else None


def applied() -> str:
    """What this process was started with, for the start-up log."""
    return os.environ.get(APPLIED_ENV, "none")


def loaded_runtime() -> str:
    """The OpenMP runtime and allocator actually mapped into this process (from /proc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    omp = "Intel OpenMP" if "libiomp5" in maps else "GNU OpenMP" if "libgomp" in maps else "?"
    alloc = "tcmalloc" if "tcmalloc" in maps else "jemalloc" if "jemalloc" in maps else "glibc"
    return f"{omp}, {alloc} allocator"
