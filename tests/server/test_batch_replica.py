"""The Batch API on a real `herd replica` (tiny model), driven by the official `openai` client:
upload, create, poll to completed, download output and errors, list, cancel, validation failures
and bad input as OpenAI errors; a replica killed mid-batch resumes without redoing or losing a
line, and SIGTERM does not wait for batch lines; a line's answer equals the same request sent
interactively (greedy); an interactive request preempts batch lines."""

import io
import json
import os
import sqlite3
import time

import openai
import pytest

from herd.server.launch import ReplicaProcess
from waiting import wait_until

ENGINE_ARGS = ("--dtype", "float32", "--device", "cpu", "--served-model-name", "tiny")
BATCH_ARGS = ("--batch-concurrency", "2", "--max-num-seqs", "2")


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def chat_line(i: int, max_tokens: int = 4, **extra) -> dict:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"count {i}"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def upload(client: openai.OpenAI, data: bytes, name: str = "in.jsonl"):
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch")


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 60.0):
    final = ("completed", "failed", "cancelled", "expired")
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status in final and b,
        timeout,
        f"batch {batch_id} finished",
    )


def read_lines(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("batches")


@pytest.fixture(scope="module")
def replica(tiny_model_dir, batch_dir):
    args = (*ENGINE_ARGS, *BATCH_ARGS, "--batch-dir", str(batch_dir))
    with ReplicaProcess(tiny_model_dir, *args) as r:
        yield r


@pytest.fixture
def client(replica):
    return client_for(replica.url)


def test_batch_runs_to_completed_and_answers_equal_interactive(client):
    lines = [chat_line(i) for i in range(5)]
    lines.append(chat_line(5, max_tokens=-1))  # refused by the replica: an error-file line
    f = upload(client, jsonl(lines))
    assert (f.object, f.purpose, f.bytes, f.filename) == (
        "file",
        "batch",
        len(jsonl(lines)),
        "in.jsonl",
    )
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    done = wait_final(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 6
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = read_lines(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(5)]
    for o, line in zip(out, lines, strict=False):
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["id"].startswith("batch_req_")
        direct = client.chat.completions.create(**line["body"])
        assert (
            o["response"]["body"]["choices"][0]["message"]["content"]
            == direct.choices[0].message.content
        )
    (err,) = read_lines(client, done.error_file_id)
    assert err["custom_id"] == "req-5" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "max_tokens"
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert batch.id in [b.id for b in client.batches.list(limit=100)]


def test_invalid_input_fails_the_batch_naming_lines(client):
    good = chat_line(0)
    other_model = chat_line(2)
    other_model["body"]["model"] = "other"
    wrong_url = {**chat_line(3), "url": "/v1/completions"}
    data = jsonl([good, good, other_model, wrong_url]) + b"{not json\n"
    batch = client.batches.create(
        input_file_id=upload(client, data).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait_final(client, batch.id)
    assert done.status == "failed" and done.failed_at
    codes = [(e.code, e.line) for e in done.errors.data]
    assert codes == [
        ("duplicate_custom_id", 2),
        ("model_mismatch", 3),
        ("invalid_url", 4),
        ("invalid_json_line", 5),
    ]


def test_bad_requests_are_openai_errors(client):
    f = upload(client, jsonl([chat_line(0)]))
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert e.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/completions", completion_window="1 day"
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    assert e.value.body["param"] == "purpose"
    small = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_final(client, small.id).status == "completed"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(small.id)
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    ids = [x.id for x in client.files.list()]
    assert f.id not in ids


def test_cancel_keeps_what_finished(client):
    lines = [chat_line(i, max_tokens=64, ignore_eos=True) for i in range(40)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_until(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1, 60, "a line done"
    )
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    done = wait_final(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    done_n = done.request_counts.completed
    assert 1 <= done_n < 40
    assert len(read_lines(client, done.output_file_id)) == done_n


def test_interactive_request_preempts_running_batch_lines(client, replica):
    """Both batch slots of the engine (--max-num-seqs 2) are held by long batch lines; a short
    interactive request still finishes before any of them: it preempted one instead of waiting."""
    lines = [chat_line(i, max_tokens=1500, ignore_eos=True) for i in range(4)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_until(lambda: metric(replica.url, "herd_num_requests_running") == 2, 60, "2 lines running")
    answer = client.chat.completions.create(**chat_line(99, max_tokens=4)["body"])
    assert answer.choices[0].finish_reason == "length"
    assert client.batches.retrieve(batch.id).request_counts.completed == 0
    client.batches.cancel(batch.id)
    assert wait_final(client, batch.id).status == "cancelled"


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics") as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def served_completions(url: str) -> float:
    return metric(url, "herd_request_success_total")


def recorded(batch_dir, batch_id: str) -> dict[str, str]:
    """custom_id -> stored result of the lines that finished, read from the store itself."""
    with sqlite3.connect(os.path.join(batch_dir, "batches.sqlite3")) as db:
        rows = db.execute(
            "SELECT custom_id, result FROM lines WHERE batch_id = ? AND status IS NOT NULL",
            (batch_id,),
        ).fetchall()
    return dict(rows)


def test_killed_replica_resumes_without_redoing_or_losing_lines(
    tiny_model_dir, batch_dir, replica, client
):
    """Last in the module: it kills the module's replica, then starts another on its store."""
    lines = [chat_line(i, max_tokens=48, ignore_eos=True) for i in range(16)]
    try:
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(lines)).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        wait_until(
            lambda: client.batches.retrieve(batch.id).request_counts.completed >= 3, 60, "3 done"
        )
    finally:
        replica.proc.kill()  # a crash: no drain, lines in flight are cut off
        replica.proc.wait()
    before = recorded(batch_dir, batch.id)
    assert 3 <= len(before) < 16
    args = (*ENGINE_ARGS, *BATCH_ARGS, "--batch-dir", str(batch_dir))
    with ReplicaProcess(tiny_model_dir, *args) as second:
        client = client_for(second.url)
        done = wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 16
        out = {o["custom_id"]: o for o in read_lines(client, done.output_file_id)}
        assert sorted(out) == sorted(line["custom_id"] for line in lines)
        for custom_id, result in before.items():  # finished before the crash: not run again
            assert out[custom_id] == json.loads(result)
        assert served_completions(second.url) == 16 - len(before)
        long_lines = [chat_line(i, max_tokens=1500, ignore_eos=True) for i in range(4)]
        client.batches.create(
            input_file_id=upload(client, jsonl(long_lines)).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        wait_until(lambda: metric(second.url, "herd_num_requests_running") == 2, 60, "running")
        t0 = time.monotonic()
    # SIGTERM with batch lines in flight: the runner stops when draining begins, so the drain
    # does not wait for them (they run again after a restart); without it, --drain-timeout (30 s)
    assert second.proc.returncode == 0 and time.monotonic() - t0 < 15
    assert "draining: 0 request(s) in flight" in second.log_path.read_text()
