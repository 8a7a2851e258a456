"""`herd serve` as a real process over fake replicas (from a command template in the config):
banner, admin API, rollout by POST and by SIGHUP, crash restart, SIGTERM drain."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from fleettools import Load
from gwtools import FAKE, free_port

from waiting import until

ADMIN = {"Authorization": "Bearer adm"}


@pytest.fixture
def herd_serve(tmp_path):
    port = free_port()
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[gateway]\nadmin_key = "adm"\n[gateway.health]\ninterval_s = 0.2\n'
        f"[fleet]\nreplicas = 2\nrestart_backoff_base_s = 0.1\ndrain_timeout_s = 10\n"
        f'command = ["{sys.executable}", "{FAKE}", "--port", "{{port}}", "--model", "{{model}}"]\n'
    )
    cmd = [
        sys.executable,
        "-c",
        "import sys; from herd.cli import main; sys.exit(main())",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--log-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "gateway on" in line or not line:
            break
    assert any("gateway on" in line for line in lines), "".join(lines)
    yield proc, f"http://127.0.0.1:{port}", lines
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def replicas(session, url):
    async with session.get(url + "/admin/replicas", headers=ADMIN) as resp:
        return (await resp.json())["replicas"]


async def test_serve_rollout_crash_and_drain(herd_serve):
    proc, url, lines = herd_serve
    banner = "".join(lines + [proc.stdout.readline() for _ in range(4)])
    assert f"curl {url}/v1/chat/completions" in banner and "OpenAI(base_url=" in banner
    payload = {"model": "fake-model", "prompt": "hi", "max_tokens": 4}
    async with aiohttp.ClientSession() as session:
        before = await replicas(session, url)
        assert [r["state"] for r in before] == ["ready", "ready"]
        assert all(r["pid"] for r in before)

        async def all_ready(n=2, exclude=()):
            rs = await replicas(session, url)
            return len(rs) == n and all(
                r["state"] == "ready" and r["pid"] not in exclude for r in rs
            )

        # Rollout by the admin API, under load: every old pid replaced, nothing fails.
        load = Load(session, url + "/v1/completions", payload, concurrency=4).start()
        async with session.post(url + "/admin/rollout?wait=1", headers=ADMIN) as resp:
            assert (await resp.json()) == {"status": "done", "replaced": 2, "version": "v1"}
        old = {r["pid"] for r in before}
        await until(lambda: all_ready(exclude=old), 20, "every replica replaced")
        # Rollout by SIGHUP.
        old = {r["pid"] for r in await replicas(session, url)}
        proc.send_signal(signal.SIGHUP)
        await until(lambda: all_ready(exclude=old), 20, "every replica replaced")
        # A crashed replica is marked down and comes back.
        victim = (await replicas(session, url))[0]
        os.kill(victim["pid"], signal.SIGKILL)
        await until(lambda: all_ready(exclude={victim["pid"]}), 20, "the victim restarted")
        statuses = await load.stop()
        assert len(statuses) > 20 and load.failures() == [], load.bodies[:3]
        pids = [r["pid"] for r in await replicas(session, url)]
    # SIGTERM: drain in order, exit 0, no replica left behind.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_cli_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "-c", "import sys; from herd.cli import main; sys.exit(main())"]
    out = subprocess.run(
        [*cmd, "serve", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "is not a model directory or a .gguf file" in out.stderr
    # An engine flag is checked before any replica starts, and the error names the setting.
    out = subprocess.run(
        [*cmd, "serve", "--model", str(tmp_path), "--max-num-seqs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "max_num_seqs must be >= 1" in out.stderr
    out = subprocess.run(
        [*cmd, "gateway", "--policy", "fastest"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "least_outstanding" in out.stderr
    out = subprocess.run(
        [*cmd, "gateway", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", "k.pem"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "TLS certificate file not found" in out.stderr
    assert "Traceback" not in out.stderr
