"""Audit log: one JSON line per answered request.

Written by a background task so the request path never waits on the disk. Prompt and
completion text are left out unless `include_text` is set."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

MAX_PENDING = 10_000  # records buffered before writers start waiting (bounded memory)


class AuditLog:
    """An append-only JSON-lines log of requests and admin actions, written by a background task so
    requests never wait on the disk. Holds no prompt or completion text unless `include_text` is
    set, and never a key."""

    def __init__(self, path: str | Path, include_text: bool = False):
        self.path = Path(path)
        self.include_text = include_text
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MAX_PENDING)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="herd-audit")

    async def stop(self) -> None:
        if self._task:
            await self._queue.put(None)
            await self._task

    async def record(self, **fields: Any) -> None:
        if not self.include_text:
            fields.pop("prompt", None)
            fields.pop("completion", None)
        fields = {"time": round(time.time(), 3), **fields}
        if self._queue.full():
            await self._queue.put(fields)  # back-pressure rather than lose audit records
        else:
            self._queue.put_nowait(fields)

    async def _run(self) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            while True:
                batch = [await self._queue.get()]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                stop = None in batch
                lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch if r)
                await asyncio.to_thread(_write, f, lines)
                if stop:
                    return


def _write(f, text: str) -> None:
    f.write(text)
    f.flush()
