"""Start a replica as a child process on a free loopback port and wait until it is ready; used by
tests, benchmarks and anything else that needs a real `herd replica` without a shell."""

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ReplicaProcess:
    """`herd replica --model DIR --port P <extra args>` as a child process; its output goes to
    `log_path` (read it when a test fails). `env` adds variables (e.g. the fleet token); with
    `--tls-cert` among the args the URL is https and `client_ssl` verifies it while waiting."""

    def __init__(
        self,
        model: str | Path,
        *args: str,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        scheme = "https" if "--tls-cert" in args else "http"
        self.url = f"{scheme}://{self.host}:{self.port}"
        self.client_ssl = client_ssl
        self.log_path = Path(log_path or f"/tmp/herd-replica-{self.port}.log")
        cmd = [sys.executable, "-c", "import sys; from herd.cli import main; sys.exit(main())"]
        cmd += ["replica", "--model", str(model), "--host", self.host, "--port", str(self.port)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*cmd, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 120.0) -> "ReplicaProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(
                    self.url + "/ready", timeout=2, context=self.client_ssl
                ) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"replica not ready after {timeout} s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain), then SIGKILL if it overstays; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ReplicaProcess":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
