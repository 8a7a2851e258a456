"""Audit log: one JSON line per answered request and per admin action, hash-chained.

Each line carries `prev`, the SHA-256 of the line before it (across rotations), so a line edited
or removed from the middle is found by `herd audit verify`. Files rotate by size or by UTC day and
rotated files are deleted after `retention_days`. Prompt and completion text never enter the
chained log: for the tenants the operator names they go to a separate daily text file, deleted
after its own `text_retention_days`. Written by a background task so requests never wait on the
disk."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from herd.gateway.config import AuditConfig

MAX_PENDING = 10_000  # records buffered before writers start waiting (bounded memory)
GENESIS = "0" * 64  # `prev` of the first line ever written


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


class AuditLog:
    """An append-only, hash-chained JSON-lines log of requests and admin actions, written by a
    background task. Promises: every line's `prev` is the hash of the line written before it
    (also across rotations and restarts); no key is ever written; prompt and completion text
    only reach the separate text file, and only for tenants in `text_tenants` (or all with
    `include_text`)."""

    def __init__(self, config: AuditConfig):
        self.config = config
        self.path = Path(config.path)
        self.text_path = self.path.with_name(f"{self.path.stem}.text{self.path.suffix}")
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MAX_PENDING)
        self._task: asyncio.Task | None = None
        self._prev = GENESIS
        self._day = ""

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev, self._day = _tail_state(self.path)
        self._task = asyncio.create_task(self._run(), name="herd-audit")

    async def stop(self) -> None:
        if self._task:
            await self._queue.put(None)
            await self._task
            self._task = None

    def keeps_text(self, tenant: str | None) -> bool:
        c = self.config
        return c.include_text or "*" in c.text_tenants or (tenant in c.text_tenants)

    async def record(self, **fields: Any) -> None:
        prompt, completion = fields.pop("prompt", None), fields.pop("completion", None)
        fields = {"time": round(time.time(), 3), "event": "request", **fields}
        await self._put(fields)
        if (prompt or completion) and self.keeps_text(fields.get("tenant")):
            text = {"time": fields["time"], "request_id": fields.get("request_id"),
                    "tenant": fields.get("tenant"), "prompt": prompt, "completion": completion}  # fmt: skip
            await self._put({"_text": text})

    async def admin(self, **fields: Any) -> None:
        await self._put({"time": round(time.time(), 3), "event": "admin", **fields})

    async def _put(self, item: dict[str, Any]) -> None:
        if self._queue.full():
            await self._queue.put(item)  # back-pressure rather than lose audit records
        else:
            self._queue.put_nowait(item)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            records = [r for r in batch if r is not None]
            if records:
                await asyncio.to_thread(self._write, records)
            if None in batch:
                return

    # --- on the writer thread ---

    def _write(self, records: list[dict[str, Any]]) -> None:
        now = dt.datetime.now(dt.UTC)
        day = now.strftime("%Y-%m-%d")
        lines, texts = [], []
        for r in records:
            if "_text" in r:
                texts.append(json.dumps(r["_text"], ensure_ascii=False) + "\n")
                continue
            line = json.dumps({**r, "prev": self._prev}, ensure_ascii=False)
            self._prev = line_hash(line)
            lines.append(line + "\n")
        data = "".join(lines).encode()
        if lines and self._must_rotate(day, len(data)):
            self._rotate(now)
        self._day = day
        if lines:
            with self.path.open("ab") as f:
                f.write(data)
        if texts:
            text_file = self.text_path.with_name(f"{self.text_path.name}.{day}")
            with text_file.open("a", encoding="utf-8") as f:
                f.write("".join(texts))
            _purge(self.text_path, self.config.text_retention_days, now)

    def _must_rotate(self, day: str, size: int) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        if self.config.rotate_daily and self._day and day != self._day:
            return True
        return self.path.stat().st_size + size > self.config.max_bytes

    def _rotate(self, now: dt.datetime) -> None:
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        self.path.rename(self.path.with_name(f"{self.path.name}.{stamp}"))
        _purge(self.path, self.config.retention_days, now)


def _tail_state(path: Path) -> tuple[str, str]:
    """(hash of the last line, its UTC day) of an existing log, to continue its chain."""
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS, ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - (1 << 16)))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
    try:
        day = dt.datetime.fromtimestamp(json.loads(last)["time"], dt.UTC).strftime("%Y-%m-%d")
    except (ValueError, KeyError, TypeError):
        day = ""
    return line_hash(last), day


def _purge(base: Path, retention_days: float | None, now: dt.datetime) -> None:
    """Delete `base`'s rotated siblings (`<name>.<stamp>`) older than the retention."""
    if retention_days is None:
        return
    cutoff = now.timestamp() - retention_days * 86_400
    for old in base.parent.glob(base.name + ".*"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)


def verify(paths: list[str | Path]) -> list[str]:
    """Check the hash chain through `paths` (oldest first): each line's `prev` must be the hash of
    the line before it. Returns the problems found (empty: intact). The first line may follow a
    file no longer there (deleted by retention); removing the newest lines leaves no trace."""
    problems, prev, where = [], None, None
    for path in paths:
        with Path(path).open(encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = raw.rstrip("\n")
                here = f"{path}:{n}"
                try:
                    claimed = json.loads(line)["prev"]
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{here}: not an audit line (no JSON object with 'prev')")
                    prev, where = line_hash(line), here
                    continue
                if prev is not None and claimed != prev:
                    problems.append(
                        f"{here}: does not follow {where}: a line between them was removed, or "
                        f"{where} was edited"
                    )
                prev, where = line_hash(line), here
    return problems
