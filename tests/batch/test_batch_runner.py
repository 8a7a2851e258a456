"""`herd.batch` without a server: the input check (OpenAI's error codes, 1-based lines), the
store's paging and ownership, and the runner over a fake `send`: busy answers retried and never
recorded, a window that runs out expires the batch with the unrun lines reported, and a store
reopened after a stop hands out only the unfinished lines."""

import asyncio
import json
import time

import pytest

from herd.batch.jsonl import check_input
from herd.batch.objects import window_seconds
from herd.batch.runner import BatchRunner
from herd.batch.store import BatchDirBusy, BatchStore
from waiting import until

URL = "/v1/completions"


def line(i: int, **over) -> dict:
    item = {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": URL,
        "body": {"model": "m", "prompt": f"p{i}"},
    }
    return {**item, **over}


def data(*lines) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def test_check_input_names_each_bad_line():
    bad_body = line(4, body={"model": "m", "prompt": "x", "stream": True})
    checked = check_input(
        data(line(0), line(1, method="GET"), line(2, body=[]), bad_body, line(5, custom_id=""))
        + b"\n[1]\n",
        URL,
    )
    assert [(e["code"], e["line"], e["param"]) for e in checked.errors] == [
        ("invalid_method", 2, "method"),
        ("invalid_request", 3, "body"),
        ("invalid_request", 4, "body.stream"),
        ("missing_custom_id", 5, "custom_id"),
        ("invalid_json_line", 7, None),
    ]
    ok = check_input(data(line(0), line(1)), URL)
    assert ok.errors == [] and ok.model == "m" and [ln.index for ln in ok.lines] == [0, 1]
    assert check_input(b"\n\n", URL).errors[0]["code"] == "empty_file"
    assert check_input(b"\xff\xfe", URL).errors[0]["code"] == "invalid_file"


def test_completion_windows():
    assert window_seconds("24h") == 86400 and window_seconds("90s") == 90
    assert window_seconds("24") is None and window_seconds("0h") is None
    assert window_seconds(24) is None


def make_batch(store: BatchStore, n: int, window_s: int = 3600, owner: str = "t") -> dict:
    f = store.write_file(owner, "in.jsonl", "batch", data(*(line(i) for i in range(n))))
    now = int(time.time())
    return store.create_batch(
        owner,
        "key",
        dict(endpoint=URL, input_file_id=f["id"], completion_window=f"{window_s}s",
             status="validating", created_at=now, expires_at=now + window_s),
    )  # fmt: skip


def test_store_scopes_by_owner_and_pages(tmp_path):
    store = BatchStore(tmp_path)
    batches = [make_batch(store, 1) for _ in range(5)]
    assert store.batch("other", batches[0]["id"]) is None
    assert store.file("other", batches[0]["input_file_id"]) is None
    first, more = store.batches("t", None, 2)
    assert more and [b["id"] for b in first] == [b["id"] for b in batches[::-1][:2]]
    rest, more = store.batches("t", first[-1]["id"], 10)
    assert not more and len(rest) == 3
    assert store.batches("other", None, 10) == ([], False)


async def test_busy_answers_are_retried_and_never_recorded(tmp_path):
    store = BatchStore(tmp_path)
    calls: list[str] = []

    async def send(batch, body, request_id):
        calls.append(body["prompt"])
        if calls.count(body["prompt"]) == 1:
            return 503, {"error": {"message": "busy"}}
        return 200, {"choices": [{"text": body["prompt"].upper()}]}

    runner = BatchRunner(store, send, concurrency=2, retry_s=0.05, poll_s=0.05)
    batch = make_batch(store, 4)
    runner.start()
    try:
        done = await until(lambda: store.batch("t", batch["id"])["status"] == "completed", 10)
        assert done
    finally:
        await runner.stop()
    assert store.counts(batch["id"]) == {"total": 4, "completed": 4, "failed": 0}
    assert sorted(calls) == sorted([f"p{i}" for i in range(4)] * 2)
    out = store.path_of(store.batch("t", batch["id"])["output_file_id"]).read_text().splitlines()
    assert [json.loads(x)["response"]["body"]["choices"][0]["text"] for x in out] == [
        "P0", "P1", "P2", "P3"
    ]  # fmt: skip


async def test_window_runs_out_and_unrun_lines_are_reported_expired(tmp_path):
    store = BatchStore(tmp_path)
    release = asyncio.Event()

    async def send(batch, body, request_id):
        if body["prompt"] != "p0":
            await release.wait()  # never released: these lines are still running at expiry
        return 200, {"ok": True}

    runner = BatchRunner(store, send, concurrency=2, poll_s=0.05)
    batch = make_batch(store, 5, window_s=1)
    runner.start()
    try:
        await until(lambda: store.batch("t", batch["id"])["status"] == "expired", 10, "expired")
    finally:
        await runner.stop()
    row = store.batch("t", batch["id"])
    assert row["expired_at"] and store.counts(batch["id"])["completed"] == 1
    errors = [json.loads(x) for x in store.path_of(row["error_file_id"]).read_text().splitlines()]
    assert [e["custom_id"] for e in errors] == ["c1", "c2", "c3", "c4"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


async def test_a_reopened_store_runs_only_unfinished_lines(tmp_path):
    store = BatchStore(tmp_path)
    sent: list[str] = []
    gate = asyncio.Event()

    async def slow(batch, body, request_id):
        if body["prompt"] in ("p2", "p3"):
            await gate.wait()
        sent.append(body["prompt"])
        return 200, {"n": body["prompt"]}

    runner = BatchRunner(store, slow, concurrency=2, poll_s=0.05)
    batch = make_batch(store, 4)
    runner.start()
    await until(lambda: store.counts(batch["id"])["completed"] == 2, 10, "2 lines done")
    await runner.stop()  # p2 and p3 are cut off in flight
    store.close()
    store = BatchStore(tmp_path)

    async def fast(batch, body, request_id):
        sent.append(body["prompt"])
        return 200, {"n": body["prompt"]}

    runner = BatchRunner(store, fast, concurrency=2, poll_s=0.05)
    runner.start()
    try:
        await until(lambda: store.batch("t", batch["id"])["status"] == "completed", 10)
    finally:
        await runner.stop()
    assert sorted(sent) == ["p0", "p1", "p2", "p3"]


def test_one_process_at_a_time_per_directory(tmp_path):
    store = BatchStore(tmp_path)
    with pytest.raises(BatchDirBusy, match="in use"):
        BatchStore(tmp_path)
    store.close()
    BatchStore(tmp_path).close()  # free again once closed


async def test_a_batch_queued_behind_a_full_runner_runs_once_slots_free(tmp_path):
    store = BatchStore(tmp_path)
    hold = asyncio.Event()

    async def send(batch, body, request_id):
        if batch["id"] == long["id"]:
            await hold.wait()
        return 200, {}

    long = make_batch(store, 4)
    runner = BatchRunner(store, send, concurrency=2, poll_s=0.05)
    runner.start()
    try:
        await until(lambda: runner.in_flight == 2, 10, "the long batch holds both slots")
        short = make_batch(store, 1)
        assert store.counts(short["id"])["completed"] == 0  # no slot: it waits its turn
        hold.set()
        await until(lambda: store.batch("t", short["id"])["status"] == "completed", 10)
    finally:
        await runner.stop()
