"""Server-sent events, written once: encoding (what herd sends) and an incremental parser (what the
gateway and bench read) that follows the WHATWG rules: LF, CRLF and CR line endings, also split
across reads; comments; multi-line `data:`; `field:value` with or without the space."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"  # OpenAI's end-of-stream sentinel
MAX_EVENT_BYTES = 1 << 20  # an unterminated event larger than this is garbage, not a slow event

_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_BLANK_LINE = re.compile(_EOL + _EOL)  # a line end followed by an empty line ends an event
_LINES = re.compile(r"\r\n|\r|\n")


def encode_json(obj: Any) -> bytes:
    """One `data:` event holding `obj` as compact JSON (JSON has no raw newlines: one line)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def encode(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """One event; a `data` with newlines becomes several `data:` lines, as the spec requires."""
    head = ""
    if event is not None:
        head += f"event: {event}\n"
    if id is not None:
        head += f"id: {id}\n"
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return (head + body + "\n").encode()


@dataclass(frozen=True)
class Event:
    """One block of a stream, up to and including its blank line. `raw` is the exact bytes read
    (so a proxy forwards the stream unchanged); `data` is None for a block without a data field
    (comments, keep-alives), which the spec does not dispatch."""

    raw: bytes
    data: str | None
    event: str | None = None
    id: str | None = None
    unknown: tuple[str, ...] = ()  # field names the spec ignores; many mean "not an SSE stream"

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"

    def json(self) -> Any:
        """The data as JSON; ValueError when it is not JSON."""
        return json.loads(self.data or "")


class SSEParser:
    """Cuts a byte stream into whole events, whatever the line endings and however the bytes are
    split between reads. Promises: every byte fed comes back exactly once in some event's `raw`
    (after `close()` for a trailing partial block), and an event larger than `max_event_bytes`
    without an end raises ValueError instead of buffering without bound."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES):
        self.max_event_bytes = max_event_bytes
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Event]:
        """Add bytes; return the events they complete."""
        buf = self._buf + chunk if self._buf else chunk
        events, start = [], 0
        for match in _BLANK_LINE.finditer(buf):
            end = match.end()
            if end == len(buf) and buf.endswith(b"\r"):
                break  # a CR at the end may be the first half of a CRLF still in flight
            events.append(parse_block(buf[start:end]))
            start = end
        self._buf = buf[start:]
        if len(self._buf) > self.max_event_bytes:
            raise ValueError("event too large or not server-sent events")
        return events

    def close(self) -> list[Event]:
        """End of stream: a trailing block without its blank line, if any (not dispatched by
        browsers, but returned so a proxy can forward every byte)."""
        rest, self._buf = self._buf, b""
        if not rest:
            return []
        events = self.feed(rest + b"\n\n")
        self._buf = b""
        return [Event(rest, e.data, e.event, e.id, e.unknown) for e in events[:1]]


def parse_block(raw: bytes) -> Event:
    """The fields of one event block (its lines, terminator included). ValueError on bytes that
    are not UTF-8."""
    data: list[str] = []
    unknown: list[str] = []
    event = id_ = None
    for line in _LINES.split(raw.decode("utf-8")):
        if not line or line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            id_ = value
        elif name != "retry":
            unknown.append(name[:40])
    return Event(raw, "\n".join(data) if data else None, event, id_, tuple(unknown))
