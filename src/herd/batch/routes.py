"""`BatchRoutes`: the aiohttp handlers of `/v1/files` and `/v1/batches`, mounted by the replica
and the gateway alike. The host says who is asking (`identify`: owner and principal, raising its
own 401); everything is scoped to that owner, so another owner's id is a 404. Every refusal is
an OpenAI error (`OpenAIError`), left to the host's error middleware."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from herd.batch.objects import (
    ENDPOINTS,
    PURPOSE,
    batch_object,
    file_object,
    page,
    window_seconds,
)
from herd.batch.runner import BatchRunner
from herd.batch.store import BatchStore
from herd.protocol.errors import OpenAIError
from herd.protocol.requests import parse_body

# identify(request) -> (owner, principal): the tenant that owns what it creates, and who (a key id)
Identify = Callable[[web.Request], tuple[str, str]]
ROUTES = (
    ("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/{file_id}"),
    ("GET", "/v1/files/{file_id}/content"), ("DELETE", "/v1/files/{file_id}"),
    ("POST", "/v1/batches"), ("GET", "/v1/batches"), ("GET", "/v1/batches/{batch_id}"),
    ("POST", "/v1/batches/{batch_id}/cancel"),
)  # fmt: skip
MAX_METADATA = 16


def bad(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def not_found(kind: str, ident: str) -> OpenAIError:
    return OpenAIError(404, f"No {kind} found with id '{ident}'.", code="not_found")


class BatchRoutes:
    """The Batch API over one store and runner; `add_routes(app)` mounts it. Uploads are streamed
    to disk within `max_file_bytes` (413 past it) and `body_timeout_s` (408)."""

    def __init__(
        self,
        store: BatchStore,
        runner: BatchRunner,
        identify: Identify,
        max_file_bytes: int,
        body_timeout_s: float,
    ) -> None:
        self.store = store
        self.runner = runner
        self.identify = identify
        self.max_file_bytes = max_file_bytes
        self.body_timeout_s = body_timeout_s

    def add_routes(self, app: web.Application) -> None:
        handlers = [
            self.upload_file, self.list_files, self.get_file, self.file_content,
            self.delete_file, self.create_batch, self.list_batches, self.get_batch,
            self.cancel_batch,
        ]  # fmt: skip
        for (method, path), handler in zip(ROUTES, handlers, strict=True):
            app.router.add_route(method, path, handler)

    # ---- files -----------------------------------------------------------------------------

    async def upload_file(self, request: web.Request) -> web.Response:
        owner, _ = self.identify(request)
        if not request.content_type.startswith("multipart/"):
            raise bad("upload a file as multipart/form-data with 'file' and 'purpose'", "file")
        temp = self.store.temp_path()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                filename, purpose = await self._read_upload(request, temp)
            if purpose != PURPOSE:
                raise bad(f"'purpose' must be {PURPOSE!r}, got {purpose!r}", "purpose")
            if filename is None:
                raise bad("'file' is required", "file")
            row = self.store.add_file(owner, filename, purpose, temp)
        except TimeoutError:
            raise OpenAIError(408, "upload not received in time", code="request_timeout") from None
        except ValueError as exc:  # aiohttp's multipart reader on a malformed body
            raise bad(f"malformed multipart body: {exc}", "file") from None
        finally:
            temp.unlink(missing_ok=True)
        return web.json_response(file_object(row))

    async def _read_upload(self, request: web.Request, temp) -> tuple[str | None, str | None]:
        filename = purpose = None
        reader = await request.multipart()
        async for part in reader:
            if part.name == "purpose":
                purpose = (await part.read(decode=True)).decode(errors="replace").strip()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                await self._save(part, temp)
        return filename, purpose

    async def _save(self, part, temp) -> None:
        size = 0
        with open(temp, "wb") as f:
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size > self.max_file_bytes:
                    raise OpenAIError(
                        413, f"file larger than {self.max_file_bytes} bytes",
                        param="file", code="file_too_large",
                    )  # fmt: skip
                f.write(chunk)

    async def list_files(self, request: web.Request) -> web.Response:
        owner, _ = self.identify(request)
        q = request.query
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad("'order' must be 'asc' or 'desc'", "order")
        limit = _limit(q, 10_000, 10_000)
        rows, more = self.store.files(owner, q.get("purpose"), q.get("after"), limit, order)
        return web.json_response(page([file_object(r) for r in rows], more))

    def _owned(self, request: web.Request, kind: str, lookup: Callable) -> dict[str, Any]:
        """The caller's file or batch named in the path; another owner's is a 404 like none."""
        owner, _ = self.identify(request)
        obj_id = request.match_info[f"{kind}_id"]
        row = lookup(owner, obj_id)
        if row is None:
            raise not_found(kind, obj_id)
        return row

    def _file(self, request: web.Request) -> dict[str, Any]:
        return self._owned(request, "file", self.store.file)

    async def get_file(self, request: web.Request) -> web.Response:
        return web.json_response(file_object(self._file(request)))

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        row = self._file(request)
        headers = {"Content-Type": "application/octet-stream"}
        return web.FileResponse(self.store.path_of(row["id"]), headers=headers)

    async def delete_file(self, request: web.Request) -> web.Response:
        owner, _ = self.identify(request)
        file_id = request.match_info["file_id"]
        if not self.store.delete_file(owner, file_id):
            raise not_found("file", file_id)
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    # ---- batches ---------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        owner, principal = self.identify(request)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = parse_body(await request.read())
        except TimeoutError:
            raise OpenAIError(
                408, "request body not received in time", code="request_timeout"
            ) from None
        if not isinstance(body, dict):
            raise bad("request body must be a JSON object")
        fields = self._batch_fields(owner, body)
        row = self.store.create_batch(owner, principal, fields)
        self.runner.wake()
        return web.json_response(self._object(row))

    def _batch_fields(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        window = body.get("completion_window")
        if not isinstance(file_id, str) or not file_id:
            raise bad("'input_file_id' is required", "input_file_id")
        if endpoint not in ENDPOINTS:
            raise bad(f"'endpoint' must be one of {list(ENDPOINTS)}, got {endpoint!r}", "endpoint")
        seconds = window_seconds(window)
        if seconds is None:
            raise bad("'completion_window' must be a duration such as '24h'", "completion_window")
        metadata = _metadata(body.get("metadata"))
        file = self.store.file(owner, file_id)
        if file is None:
            raise bad(f"No file found with id '{file_id}'.", "input_file_id", "invalid_file")
        if file["purpose"] != PURPOSE:
            raise bad(
                f"file '{file_id}' has purpose {file['purpose']!r}, not 'batch'", "input_file_id"
            )
        now = int(time.time())
        return {
            "endpoint": endpoint, "input_file_id": file_id, "completion_window": window,
            "status": "validating", "created_at": now, "expires_at": now + seconds,
            "metadata": json.dumps(metadata) if metadata is not None else None,
        }  # fmt: skip

    def _object(self, row: dict[str, Any]) -> dict[str, Any]:
        return batch_object(row, self.store.counts(row["id"]))

    def _batch(self, request: web.Request) -> dict[str, Any]:
        return self._owned(request, "batch", self.store.batch)

    async def list_batches(self, request: web.Request) -> web.Response:
        owner, _ = self.identify(request)
        limit = _limit(request.query, 20, 100)
        rows, more = self.store.batches(owner, request.query.get("after"), limit)
        return web.json_response(page([self._object(r) for r in rows], more))

    async def get_batch(self, request: web.Request) -> web.Response:
        return web.json_response(self._object(self._batch(request)))

    async def cancel_batch(self, request: web.Request) -> web.Response:
        row = self._batch(request)
        if row["status"] in ("validating", "in_progress"):
            self.store.update(row["id"], status="cancelling", cancelling_at=int(time.time()))
            self.runner.wake()
            row = self.store.batch(None, row["id"])
        elif row["status"] not in ("cancelling", "cancelled"):
            raise OpenAIError(
                409, f"Cannot cancel a batch with status '{row['status']}'.", code="conflict"
            )
        return web.json_response(self._object(row))


def _limit(query, default: int, most: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad(f"'limit' must be an integer, got {raw!r}", "limit") from None
    if not 1 <= value <= most:
        raise bad(f"'limit' must be between 1 and {most}, got {value}", "limit")
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 string pairs, keys up to 64 and values up to 512 chars."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise bad(f"'metadata' must be an object of at most {MAX_METADATA} pairs", "metadata")
    for k, v in value.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise bad("'metadata' keys are at most 64 chars, values strings of 512", "metadata")
    return value


def mount_off(app: web.Application, hint: str) -> None:
    """The Batch API's routes answering 404 with `hint` (how to turn it on)."""

    async def off(_request: web.Request) -> web.Response:
        raise OpenAIError(404, f"the Batch API is off: {hint}", code="batch_api_off")

    for method, path in ROUTES:
        app.router.add_route(method, path, off)
