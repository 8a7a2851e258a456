"""`herd serve --backend ray` on a real local Ray cluster (loopback only, token auth on): the job
API refuses a client without the token; the demo model is served through herd's gateway in front
of Ray Serve; a replica actor SIGKILLed under load costs no request and comes back.

Needs the `ray` extra (`scripts/ray.sh`, run by `scripts/services.sh`)."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gwtools import free_port
from openai import OpenAI
from raytools import RAY, RayCluster, descendants, enter_netns

from waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def cluster():
    if not Path(RAY).exists():
        pytest.fail("the ray extra is not installed: run `bash scripts/ray.sh`")
    with enter_netns():
        ray_cluster = RayCluster(free_port(), free_port()).start()
        print(f"\nray head started in {ray_cluster.started_s:.1f} s")
        try:
            yield ray_cluster
        finally:
            ray_cluster.stop()


def test_job_submission_without_the_token_is_refused(cluster, tmp_path):
    marker = tmp_path / "pwned"
    job = {"entrypoint": f"touch {marker}"}
    anonymous = httpx.post(cluster.dashboard + "/api/jobs/", json=job, timeout=30)
    wrong = httpx.post(cluster.dashboard + "/api/jobs/", json=job, timeout=30,
                       headers={"Authorization": "Bearer not-the-token"})  # fmt: skip
    assert anonymous.status_code == 401, anonymous.text
    assert wrong.status_code in (401, 403), wrong.text
    listed = httpx.get(cluster.dashboard + "/api/jobs/", timeout=30,
                       headers={"Authorization": f"Bearer {cluster.token}"})  # fmt: skip
    assert listed.status_code == 200 and listed.json() == []  # the token opens it; no job ran
    assert not marker.exists()


def serve_replicas(cluster: RayCluster) -> list[dict]:
    """herd's Serve replicas as Ray's dashboard reports them (state, pid, replica_id)."""
    resp = httpx.get(cluster.dashboard + "/api/serve/applications/", timeout=30,
                     headers={"Authorization": f"Bearer {cluster.token}"})  # fmt: skip
    resp.raise_for_status()
    app = resp.json().get("applications", {}).get("herd")
    return app["deployments"]["HerdReplica"]["replicas"] if app else []


def running(cluster: RayCluster) -> list[dict]:
    return [r for r in serve_replicas(cluster) if r["state"] == "RUNNING"]


def replaced(cluster: RayCluster, victim: int) -> list[dict] | None:
    """Two RUNNING replicas, neither of them the killed one; None until then."""
    others = [r for r in running(cluster) if r["pid"] != victim]
    return others if len(others) == 2 else None


@contextlib.contextmanager
def herd_serve(cluster: RayCluster, model: Path, log: Path, *flags: str, banner: str):
    """`herd serve --backend ray` on the cluster until the block ends (then SIGTERM)."""
    port = free_port()
    cmd = [sys.executable, "-m", "herd.cli", "serve", "--backend", "ray",
           "--address", cluster.address, "--model", str(model), "--port", str(port),
           "--device", "cpu", "--dtype", "float32", *flags]  # fmt: skip
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: banner in log.read_text() or proc.poll() is not None,
                   timeout=240, what="herd serve's banner")  # fmt: skip
        assert proc.poll() is None, log.read_text()[-4000:]
        print(f"Serve app ready ({' '.join(flags)}) in {time.perf_counter() - t0:.1f} s")
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def ray_fleet(cluster, tiny_model_dir, tmp_path):
    log = tmp_path / "serve.log"
    with herd_serve(cluster, tiny_model_dir, log, "--replicas", "2", banner="gateway on") as (
        url,
        proc,
    ):
        yield url, proc, log


class Load:
    """Closed-loop non-streaming completions from a few threads, with no client retries: every
    failure the gateway lets through is counted. One more thread streams, and sorts each stream
    by how it ended: with a finish_reason, with an error event, or silently cut."""

    def __init__(self, url: str, model: str, users: int = 2):
        self.client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        self.model, self.ok, self.texts, self.failures = model, 0, set(), []
        self.streams: dict[str, int] = {"finished": 0, "error": 0, "cut": 0}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._user) for _ in range(users)]
        self.threads.append(threading.Thread(target=self._streamer))
        for thread in self.threads:
            thread.start()

    def _streamer(self) -> None:
        while not self.stop.is_set():
            last = None
            try:
                for chunk in self.client.completions.create(
                    model=self.model, prompt=PROMPT, max_tokens=64, temperature=0, stream=True
                ):
                    last = chunk
            except Exception:  # noqa: BLE001 - an error event (or a refused stream) is an end
                self.streams["error"] += 1
                continue
            done = last is not None and last.choices and last.choices[0].finish_reason
            self.streams["finished" if done else "cut"] += 1

    def _user(self) -> None:
        while not self.stop.is_set():
            try:
                out = self.client.completions.create(
                    model=self.model, prompt=PROMPT, max_tokens=16, temperature=0
                )
                self.texts.add(out.choices[0].text)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.failures.append(repr(exc))

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)


def test_replica_killed_under_load_costs_no_request(cluster, ray_fleet):
    url, proc, log = ray_fleet
    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    expected = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
    assert expected.choices[0].finish_reason == "length"
    before = wait_until(lambda: len(running(cluster)) == 2 and running(cluster), timeout=60,
                        what="two RUNNING Serve replicas")  # fmt: skip
    victim = before[0]["pid"]
    herd_children = descendants({victim}) - {victim}
    assert herd_children, "the replica actor hosts no herd replica process"

    load = Load(url, model)
    try:
        wait_until(lambda: load.ok >= 20 or load.failures, timeout=120, what="traffic flowing")
        os.kill(victim, signal.SIGKILL)
        t_kill = time.perf_counter()
        back = wait_until(lambda: replaced(cluster, victim), timeout=180,
                          what="the killed replica replaced and RUNNING")  # fmt: skip
        replaced_s = time.perf_counter() - t_kill
        served = load.ok
        wait_until(lambda: load.ok >= served + 20 or load.failures, timeout=120,
                   what="traffic after the replacement")  # fmt: skip
    finally:
        load.join()
    metrics = httpx.get(url + "/metrics", timeout=30).text
    retries = [line for line in metrics.splitlines() if line.startswith("herd_gateway_retries")]
    print(f"gateway retries: {retries}")
    print(f"replica replaced and RUNNING {replaced_s:.1f} s after SIGKILL; "
          f"{load.ok} requests served, {len(load.failures)} failed; streams {load.streams}")  # fmt: skip
    assert load.failures == [], load.failures[:3]
    assert load.streams["cut"] == 0 and load.streams["finished"] > 0, load.streams
    assert load.texts == {expected.choices[0].text}  # greedy: every replica answers alike
    assert {r["replica_id"] for r in back} != {r["replica_id"] for r in before}
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in herd_children), timeout=30,
               what="the killed actor's herd replica gone with it")  # fmt: skip

    proc.send_signal(signal.SIGTERM)  # drains: the app is deleted from the cluster
    assert proc.wait(90) == 0, log.read_text()[-4000:]
    assert serve_replicas(cluster) == []


def test_ray_proxy_alone_serves_openai_clients(cluster, tiny_model_dir, tmp_path):
    log = tmp_path / "serve.log"
    flags = ("--replicas", "1", "--ray-proxy")
    with herd_serve(cluster, tiny_model_dir, log, *flags, banner="Ray Serve's proxy on") as (
        url,
        proc,
    ):
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=8,
                                                temperature=0, stream=True))  # fmt: skip
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
        bad = httpx.post(url + "/v1/completions", json={"model": model, "prompt": PROMPT,
                         "max_tokens": -1}, timeout=60)  # fmt: skip
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-4000:]
    assert serve_replicas(cluster) == []
