"""`BatchRunner`: the one loop that moves batches through their statuses. It checks a new batch's
input (validating → in_progress or failed), keeps up to `concurrency` lines in flight through
the `send` callable the host supplies (replica: its engine at the lowest priority; gateway: its
normal dispatch), records each answer as it arrives, and writes the output and error files
when a batch completes, is cancelled or expires. A line whose answer says "busy" (429, 502,
503, 504) is retried later, never recorded as failed; a line cut off by a stop or restart has no
result yet and runs again, so no line is lost and none runs twice to completion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from herd.batch.jsonl import Line, check_input
from herd.batch.objects import PURPOSE, error_line, new_id, result_line
from herd.batch.store import BatchStore

log = logging.getLogger("herd.batch")

# send(batch row, request body, request id) -> (HTTP status, response body)
Send = Callable[[dict[str, Any], dict[str, Any], str], Awaitable[tuple[int, Any]]]
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class BatchRunner:
    """Runs every active batch of a store, oldest first, at most `concurrency` lines at once.
    Promises: each line's result is committed before the next tick sees it; cancelling or
    stopping never records a half-run line; a batch ends in exactly one final status."""

    def __init__(
        self,
        store: BatchStore,
        send: Send,
        concurrency: int = 8,
        retry_s: float = 1.0,
        poll_s: float = 1.0,
    ) -> None:
        self.store = store
        self.send = send
        self.concurrency = concurrency
        self.retry_s = retry_s
        self.poll_s = poll_s
        self._running: dict[tuple[str, int], asyncio.Task] = {}
        self._retry_at: dict[str, float] = {}  # batch id -> no new lines before (monotonic)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="herd-batch-runner")

    async def stop(self) -> None:
        """Stop taking lines and cut off those in flight (they run again after a restart)."""
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._tick()
            except Exception:  # a broken batch must not stop every other
                log.exception("batch runner tick failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    # ---- one pass --------------------------------------------------------------------------

    async def _tick(self) -> None:
        now = time.time()
        for batch in self.store.batches_in(
            ("validating", "in_progress", "finalizing", "cancelling")
        ):
            status = batch["status"]
            if status == "validating":
                await self._validate(batch)
            elif status == "cancelling":
                self._stop_batch(batch, "cancelled")
            elif status == "finalizing":
                self._finish(batch, "completed")
            elif now >= batch["expires_at"]:
                self._stop_batch(batch, "expired")
        self._fill(now)

    async def _validate(self, batch: dict[str, Any]) -> None:
        path = self.store.path_of(batch["input_file_id"])
        try:  # off the event loop: a large file must not stall the host's traffic
            checked = await asyncio.to_thread(_check_file, path, batch["endpoint"])
        except OSError:
            self._fail(batch, [_error("file_not_found", "the input file was deleted")])
            return
        if self.store.batch(None, batch["id"])["status"] != "validating":
            return  # cancelled while it was being checked
        if checked.errors:
            self._fail(batch, checked.errors)
            return
        self.store.add_lines(
            batch["id"], checked.lines, status="in_progress", model=checked.model,
            in_progress_at=int(time.time()),
        )  # fmt: skip
        log.info("batch %s: %d requests in progress", batch["id"], len(checked.lines))

    def _fail(self, batch: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        self.store.update(
            batch["id"], status="failed", errors=json.dumps(errors), failed_at=int(time.time())
        )
        log.info("batch %s failed validation: %s", batch["id"], errors[0]["message"])

    def _fill(self, now: float) -> None:
        for batch in self.store.batches_in(("in_progress",)):
            if now >= batch["expires_at"]:
                continue
            running = {i for b, i in self._running if b == batch["id"]}
            if not running and not self.store.pending(batch["id"], set(), 1):
                # checked before the room: a finished batch ends even while others fill every slot
                self.store.update(batch["id"], status="finalizing", finalizing_at=int(now))
                self._finish(self.store.batch(None, batch["id"]), "completed")
                continue
            room = self.concurrency - len(self._running)
            if self._retry_at.get(batch["id"], 0.0) > time.monotonic() or room <= 0:
                continue
            for line in self.store.pending(batch["id"], running, room):
                task = asyncio.create_task(self._run_line(batch, line))
                self._running[(batch["id"], line.index)] = task

    async def _run_line(self, batch: dict[str, Any], line: Line) -> None:
        request_id = new_id("req_")
        try:
            try:
                status, body = await self.send(batch, line.body, request_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken line is an error line, not a stuck batch
                log.exception("batch %s line %d failed", batch["id"], line.index)
                status, body = 500, _error_body(f"request failed: {exc}")
            if status in RETRY_STATUSES:
                self._retry_at[batch["id"]] = time.monotonic() + self.retry_s
                return
            self.store.record(
                batch["id"],
                line.index,
                status,
                result_line(line.custom_id, status, request_id, body),
            )
        finally:
            self._running.pop((batch["id"], line.index), None)
            self.wake()

    # ---- the end of a batch ----------------------------------------------------------------

    def _stop_batch(self, batch: dict[str, Any], final: str) -> None:
        """Cancel the batch's lines in flight; once none is left, write its files and end it."""
        mine = [t for (b, _), t in self._running.items() if b == batch["id"]]
        for task in mine:
            task.cancel()
        if not mine:
            self._finish(batch, final)

    def _finish(self, batch: dict[str, Any], final: str) -> None:
        out, err = [], []
        for status, custom_id, result in self.store.results(batch["id"]):
            if status is None:
                if final == "expired":  # as OpenAI: unrun requests are reported as expired
                    line = error_line(custom_id, "batch_expired", "the batch expired first")
                    err.append(json.dumps(line))
                continue
            (out if status == 200 else err).append(result)
        owner, now = batch["owner"], int(time.time())
        fields: dict[str, Any] = {"status": final, f"{final}_at": now}
        if out:
            name = f"{batch['id']}_output.jsonl"
            fields["output_file_id"] = self._write(owner, name, out)
        if err:
            fields["error_file_id"] = self._write(owner, f"{batch['id']}_error.jsonl", err)
        self.store.update(batch["id"], **fields)
        self._retry_at.pop(batch["id"], None)
        log.info("batch %s %s: %d answered, %d errors", batch["id"], final, len(out), len(err))

    def _write(self, owner: str, name: str, lines: list[str]) -> str:
        data = "".join(line + "\n" for line in lines).encode()
        return self.store.write_file(owner, name, f"{PURPOSE}_output", data)["id"]


def _check_file(path, endpoint: str):
    return check_input(path.read_bytes(), endpoint)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": None}


def _error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "internal_error", "param": None, "code": None}}
