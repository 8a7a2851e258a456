"""The Batch API's wire objects as OpenAI writes them: ids, statuses, the file and batch objects
built from stored rows, the output / error line of one request, and list pages."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

PURPOSE = "batch"
# The engine priority of a batch line where nothing else says (lower values run first; requests
# default to 0): after every interactive request, which preempts it when the engine is full.
BATCH_PRIORITY = 1 << 30
# Endpoints a batch may target; the rest of OpenAI's (embeddings, responses) are refused with 400.
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
# OpenAI accepts only "24h"; herd also takes other whole durations (tests use seconds).
WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smh])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600}
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("failed", "completed", "expired", "cancelled")
BATCH_TIMES = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def window_seconds(window: str) -> int | None:
    """Seconds of a completion window ("24h"), None when it is not one."""
    m = WINDOW.match(window) if isinstance(window, str) else None
    return int(m.group(1)) * UNIT_S[m.group(2)] if m else None


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def batch_object(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    errors = json.loads(row["errors"]) if row["errors"] else None
    obj = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": row["model"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        **{name: row[name] for name in BATCH_TIMES},
        "request_counts": counts,
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
    }
    return obj


def result_line(custom_id: str, status: int, request_id: str, body: Any) -> dict[str, Any]:
    """One request's line in the output (status 200) or error file (any other status)."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }


def error_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A request that never got a response (the batch expired first): error file only."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page: the openai client follows `has_more` with `after=last_id`."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
