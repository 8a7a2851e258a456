"""A real local Ray cluster for tests, held to loopback and with token auth on.

Ray cannot be kept on 127.0.0.1 by flags (it rewrites the address and some listeners bind
0.0.0.0), so as root the cluster, `herd serve` and the test's own client all live in a network
namespace that has only `lo`: `enter_netns` moves the calling thread there, and processes and
threads it starts afterwards inherit it. Teardown is by PID (never `ray stop`, which kills every
Ray process on the machine by name)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
RAY = str(Path(sys.executable).with_name("ray"))


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) failed")


@contextlib.contextmanager
def enter_netns():
    """A fresh network namespace with only `lo` (root only; yields None elsewhere) that this
    thread works in until the block ends; its processes are killed and it is deleted then."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        yield None
        return
    name = f"herd-ray-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        _setns(target)
        try:
            yield name
        finally:
            _setns(home)
            os.close(home)
            os.close(target)
    finally:
        terminate(netns_pids(name))
        subprocess.run(["ip", "netns", "delete", name], check=False)


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them."""
    pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    found, grew = set(roots), True
    while grew:
        new = {p for p in pids if _ppid(p) in found} - found
        found |= new
        grew = bool(new)
    return found


def terminate(pids, timeout: float = 10.0) -> None:
    """SIGTERM these PIDs, then SIGKILL those still alive after `timeout`."""
    pids = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"}
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@dataclass
class RayCluster:
    """A head node started with `ray start` in its own temp dir; `env` (token included) is what a
    client of it needs."""

    gcs_port: int
    dashboard_port: int
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="hray-"))
    started_s: float = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        src = str(Path(__file__).resolve().parents[2] / "src")
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip

    def start(self) -> RayCluster:
        cmd = [RAY, "start", "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
               "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats"]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        self.started_s = time.perf_counter() - t0
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{done.stdout}\n{done.stderr}")
        return self

    def pids(self) -> set[int]:
        """Every process of this cluster: those naming its temp dir, and their children."""
        all_pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        return descendants({p for p in all_pids if self.temp_dir in _cmdline(p)})

    def stop(self) -> None:
        terminate(self.pids())
        shutil.rmtree(self.temp_dir, ignore_errors=True)
