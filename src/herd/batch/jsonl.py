"""The check of a batch's input file, as OpenAI makes it before a batch runs: every line one JSON
object with a unique `custom_id`, `method` POST, the batch's `url`, an object `body` naming the
same model as every other line, and no streaming. Any error fails the whole batch, each error
naming its 1-based line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LINES = 50_000  # OpenAI's limit on requests per batch
MAX_ERRORS = 100  # errors reported per batch; the rest are counted in the last message


@dataclass
class Line:
    """One request of a batch: its 0-based index in the file, custom_id and request body."""

    index: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class Checked:
    """The result of checking a file: its lines and model when `errors` is empty; otherwise
    OpenAI's error entries ({code, message, param, line})."""

    lines: list[Line] = field(default_factory=list)
    model: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        self.errors.append({"code": code, "message": message, "param": param, "line": line})


def check_input(data: bytes, endpoint: str) -> Checked:
    """The lines of `data` (JSONL) for a batch on `endpoint`, or why it cannot run."""
    out = Checked()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        out.add("invalid_file", "the input file is not UTF-8 text", None)
        return out
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        _check_line(raw, number, endpoint, seen, out)
        if len(out.lines) > MAX_LINES:
            out.add("too_many_requests", f"a batch holds at most {MAX_LINES} requests", number)
            break
    if not out.lines and not out.errors:
        out.add("empty_file", "the input file holds no requests", None)
    if len(out.errors) > MAX_ERRORS:
        more = len(out.errors) - MAX_ERRORS
        out.errors = out.errors[:MAX_ERRORS]
        out.errors[-1]["message"] += f" ({more} more errors not shown)"
    return out


def _check_line(raw: str, number: int, endpoint: str, seen: set[str], out: Checked) -> None:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        out.add("invalid_json_line", f"line {number} is not valid JSON: {exc.msg}", number)
        return
    if not isinstance(item, dict):
        out.add("invalid_json_line", f"line {number} is not a JSON object", number)
        return
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        out.add("missing_custom_id", "'custom_id' must be a non-empty string", number, "custom_id")
        return
    if custom_id in seen:
        out.add(
            "duplicate_custom_id",
            f"custom_id {custom_id!r} is used by an earlier line",
            number,
            "custom_id",
        )
        return
    seen.add(custom_id)
    if item.get("method") != "POST":
        out.add("invalid_method", "'method' must be \"POST\"", number, "method")
        return
    if item.get("url") != endpoint:
        out.add(
            "invalid_url",
            f"'url' is {item.get('url')!r}, but this batch's endpoint is {endpoint!r}",
            number,
            "url",
        )
        return
    _check_body(item.get("body"), number, custom_id, out)


def _check_body(body: Any, number: int, custom_id: str, out: Checked) -> None:
    if not isinstance(body, dict):
        out.add("invalid_request", "'body' must be a JSON object", number, "body")
        return
    model = body.get("model")
    if not isinstance(model, str) or not model:
        out.add("missing_model", "'body.model' must be a non-empty string", number, "body.model")
        return
    if body.get("stream"):
        out.add("invalid_request", "a batch request cannot stream", number, "body.stream")
        return
    if out.model is not None and model != out.model:
        out.add(
            "model_mismatch",
            f"every request of a batch must use one model: {model!r} is not {out.model!r}",
            number,
            "body.model",
        )
        return
    out.model = model
    out.lines.append(Line(len(out.lines), custom_id, body))
