"""`herd replica --tensor-parallel-size 2` on CPU: serves the same greedy completion as a
single-rank offline engine, and when a worker rank dies (idle) the replica reports itself
unhealthy (/health, /ready) at once and answers 500 instead of hanging."""

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.server.launch import ReplicaProcess
from waiting import wait_until

PROMPT = "The quick brown fox"


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def worker_pids(pid: int) -> list[int]:
    """Children of `pid` started by multiprocessing's spawn (not its resource tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_two_rank_replica_serves_and_a_dead_rank_makes_it_unhealthy(tiny_model_dir):
    args = ("--dtype", "float32", "--device", "cpu", "--served-model-name", "tiny")
    ref = LLM(str(tiny_model_dir), dtype="float32", device="cpu")
    expected = ref.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12))[0]
    with ReplicaProcess(tiny_model_dir, *args, "--tensor-parallel-size", "2") as replica:
        client = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
        resp = client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        assert resp.choices[0].model_extra["token_ids"] == expected.outputs[0].token_ids
        assert resp.choices[0].text == expected.outputs[0].text

        # Killed while idle: the replica says so before any request finds out.
        (worker,) = worker_pids(replica.proc.pid)
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: status(replica.url + "/health") == 500, 10, "/health says 500")
        assert status(replica.url + "/ready") == 503
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4)
        assert "tensor-parallel rank 1" in replica.log_path.read_text(errors="replace")  # whole log
