"""`herd serve` with a real replica: the fleet gets a random internal token that reaches the
replica through its environment (never its command line); the replica refuses anyone without
it, the gateway gets through, and the token appears in no log and no /metrics."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from fleettools import REPLICA_ARGS
from gwtools import free_port

from herd.protocol.fleet_auth import ENV_VAR

ADMIN = {"Authorization": "Bearer adm"}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_serve_gives_replicas_a_token_they_require(tiny_model_dir, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from herd.cli import main; sys.exit(main())",
           "serve", "--model", str(tiny_model_dir), "--replicas", "1", "--port", str(port),
           "--admin-key", "adm", "--log-dir", str(tmp_path),
           "--replica-args", " ".join(REPLICA_ARGS)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out.append(proc.stdout.readline())
            if "gateway on" in out[-1] or not out[-1]:
                break
        assert any("gateway on" in line for line in out), "".join(out)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/admin/replicas", headers=ADMIN) as r:
                (replica,) = (await r.json())["replicas"]
            token = environ(replica["pid"])[ENV_VAR]
            assert len(token) >= 32
            cmdline = Path(f"/proc/{replica['pid']}/cmdline").read_bytes()
            assert token.encode() not in cmdline
            assert replica["url"].startswith("http://127.0.0.1:")  # loopback by default
            for path in ("/v1/models", "/metrics"):
                async with s.get(replica["url"] + path) as r:
                    assert r.status == 401
            body = {"model": tiny_model_dir.name, "prompt": "hi", "max_tokens": 3}
            async with s.post(url + "/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
            async with s.get(url + "/metrics") as r:
                assert token not in await r.text()
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    logs = "".join(out) + rest + "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert token not in logs
