"""`BatchStore`: the Batch API's durable state. Files live under `<batch_dir>/files/` (written to
a temporary name, then renamed, so a crash never leaves half a file under an id); files, batches
and every line's result are rows of one SQLite database (`<batch_dir>/batches.sqlite3`, WAL), a
line's result committed as soon as it is known, so a restart redoes only unfinished lines."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from herd.batch.jsonl import Line
from herd.batch.objects import BATCH_TIMES, new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    principal TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT, input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL, status TEXT NOT NULL, errors TEXT, output_file_id TEXT,
    error_file_id TEXT, created_at INTEGER NOT NULL, in_progress_at INTEGER,
    expires_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER, metadata TEXT);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
    status INTEGER, result TEXT, PRIMARY KEY (batch_id, idx));
CREATE INDEX IF NOT EXISTS pending_lines ON lines (batch_id, idx) WHERE status IS NULL;
"""
BATCH_FIELDS = {"status", "errors", "output_file_id", "error_file_id", "model", *BATCH_TIMES}


class BatchDirBusy(RuntimeError):
    """Another process holds the batch directory: two runners would run the same lines."""


class BatchStore:
    """Files and batches of every owner (a tenant on the gateway, "" on a replica), each visible
    only to its owner. Promises: a file row exists only once its bytes are on disk, a line with
    a recorded result is never handed out as pending again, across restarts, and one process at
    a time uses a directory (an exclusive lock, released when the process dies)."""

    def __init__(self, batch_dir: str | Path) -> None:
        self.dir = Path(batch_dir)
        self.files_dir = self.dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "w")  # noqa: SIM115 - held for the store's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise BatchDirBusy(f"batch dir {self.dir} is in use by another process") from None
        self.db = sqlite3.connect(self.dir / "batches.sqlite3", isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: survives a process crash
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    # ---- files -----------------------------------------------------------------------------

    def temp_path(self) -> Path:
        return self.files_dir / f".upload-{new_id('')}"

    def add_file(self, owner: str, filename: str, purpose: str, temp: Path) -> dict[str, Any]:
        """Adopt the fully written `temp` as a new file of `owner`."""
        file_id = new_id("file-")
        size = temp.stat().st_size
        os.replace(temp, self.path_of(file_id))
        row = dict(
            id=file_id, owner=owner, filename=filename, purpose=purpose, bytes=size,
            created_at=int(time.time()),
        )  # fmt: skip
        self.db.execute(
            "INSERT INTO files (id, owner, filename, purpose, bytes, created_at) "
            "VALUES (:id, :owner, :filename, :purpose, :bytes, :created_at)",
            row,
        )
        return row

    def write_file(self, owner: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        temp = self.temp_path()
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return self.add_file(owner, filename, purpose, temp)

    def path_of(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def file(self, owner: str, file_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)
        ).fetchone()
        return dict(row) if row else None

    def files(
        self, owner: str, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        where, args = "owner = ?", [owner]
        if purpose:
            where, args = where + " AND purpose = ?", [*args, purpose]
        return self._page("files", where, args, after, limit, order == "asc")

    def delete_file(self, owner: str, file_id: str) -> bool:
        cur = self.db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        if cur.rowcount:
            self.path_of(file_id).unlink(missing_ok=True)
        return bool(cur.rowcount)

    # ---- batches ---------------------------------------------------------------------------

    def create_batch(self, owner: str, principal: str, fields: dict[str, Any]) -> dict[str, Any]:
        row = {"id": new_id("batch_"), "owner": owner, "principal": principal, **fields}
        row.setdefault("created_at", int(time.time()))
        cols = ", ".join(row)
        self.db.execute(
            f"INSERT INTO batches ({cols}) VALUES ({', '.join(':' + c for c in row)})", row
        )
        return self.batch(owner, row["id"])  # type: ignore[return-value]

    def batch(self, owner: str | None, batch_id: str) -> dict[str, Any] | None:
        """The batch `batch_id` of `owner` (None: of any owner, for the runner)."""
        if owner is None:
            row = self.db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        else:
            row = self.db.execute(
                "SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner)
            ).fetchone()
        return dict(row) if row else None

    def batches(self, owner: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        return self._page("batches", "owner = ?", [owner], after, limit, False)

    def batches_in(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every owner's batches in `statuses`, oldest first (the order they are served)."""
        marks = ", ".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq", statuses
        ).fetchall()
        return [dict(r) for r in rows]

    def update(self, batch_id: str, **fields: Any) -> None:
        unknown = set(fields) - BATCH_FIELDS
        if unknown:
            raise ValueError(f"not batch fields: {sorted(unknown)}")
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        self.db.execute(f"UPDATE batches SET {sets} WHERE id = :id", {**fields, "id": batch_id})

    def _page(self, table: str, where: str, args: list, after: str | None, limit: int, asc: bool):
        if after:
            seq = self.db.execute(f"SELECT seq FROM {table} WHERE id = ?", (after,)).fetchone()
            if seq is not None:
                where, args = f"{where} AND seq {'>' if asc else '<'} ?", [*args, seq[0]]
        rows = self.db.execute(
            f"SELECT * FROM {table} WHERE {where} ORDER BY seq {'ASC' if asc else 'DESC'} LIMIT ?",
            [*args, limit + 1],
        ).fetchall()
        return [dict(r) for r in rows[:limit]], len(rows) > limit

    # ---- lines -----------------------------------------------------------------------------

    def add_lines(self, batch_id: str, lines: list[Line], **fields: Any) -> None:
        """Store a checked batch's lines and update it (to in_progress) in one transaction."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, body) VALUES (?, ?, ?, ?)",
                [(batch_id, ln.index, ln.custom_id, json.dumps(ln.body)) for ln in lines],
            )
            self.update(batch_id, **fields)

    def pending(self, batch_id: str, skip: set[int], limit: int) -> list[Line]:
        """Up to `limit` lines without a result, in file order, not in `skip` (running now)."""
        rows = self.db.execute(
            "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND status IS NULL "
            "ORDER BY idx LIMIT ?",
            (batch_id, limit + len(skip)),
        ).fetchall()
        lines = [Line(r[0], r[1], json.loads(r[2])) for r in rows if r[0] not in skip]
        return lines[:limit]

    def record(self, batch_id: str, index: int, status: int, result: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE lines SET status = ?, result = ? WHERE batch_id = ? AND idx = ? "
            "AND status IS NULL",
            (status, json.dumps(result), batch_id, index),
        )

    def counts(self, batch_id: str) -> dict[str, int]:
        total, completed, failed = self.db.execute(
            "SELECT COUNT(*), COUNT(CASE WHEN status = 200 THEN 1 END), "
            "COUNT(CASE WHEN status IS NOT NULL AND status != 200 THEN 1 END) "
            "FROM lines WHERE batch_id = ?",
            (batch_id,),
        ).fetchone()
        return {"total": total, "completed": completed, "failed": failed}

    def results(self, batch_id: str) -> list[tuple[int | None, str, str | None]]:
        """(status, custom_id, result JSON) of every line in file order (status None: no result)."""
        return self.db.execute(
            "SELECT status, custom_id, result FROM lines WHERE batch_id = ? ORDER BY idx",
            (batch_id,),
        ).fetchall()

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    """BEGIN ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, exc_type, *_exc) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
