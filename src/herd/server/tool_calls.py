"""One choice's output as tool calls, streamed as OpenAI streams them (a call's id and name
first, then its arguments in pieces) and whole at the end. The output's shape depends on
`tool_choice`: named (the text is the arguments), required (a JSON array of
{"name", "parameters"}, held to that schema by the engine), or auto (the parser decides at the
end)."""

import json
import uuid
from dataclasses import dataclass
from typing import Any

from herd.server.tool_parsers import ParsedCall, ToolParser


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Sent:
    id: str
    name_sent: bool = False
    args_sent: int = 0  # characters of the arguments already streamed


class ToolCallStream:
    """Turns one choice's text deltas into chat deltas (`feed`, `finish`) and its whole text into
    the message's `content` / `tool_calls` (`message`). `called` says whether the choice ended
    up calling tools (its finish_reason "stop" then reads "tool_calls")."""

    def __init__(
        self, mode: str, parser: ToolParser, names: set[str], name: str | None = None
    ) -> None:
        self.mode, self.parser, self.names, self.name = mode, parser, names, name
        self.text = ""
        self.sent: list[_Sent] = []
        self.content_mode = False  # auto: the text turned out not to be a call
        self.called = mode in ("named", "required")

    # ---- streaming ---------------------------------------------------------------------------

    def feed(self, delta: str) -> list[dict[str, Any]]:
        """Chat deltas for a new piece of text (possibly none)."""
        self.text += delta
        if self.mode == "auto":
            if not self.content_mode and not self.parser.may_start_call(self.text):
                self.content_mode = True
                return [{"content": self.text}] if self.text else []
            return [{"content": delta}] if self.content_mode and delta else []
        return self._call_deltas(self._calls_so_far())

    def finish(self) -> list[dict[str, Any]]:
        """What is still unsent once the choice is finished."""
        if self.mode != "auto" or self.content_mode:
            return []
        content, calls = self.parser.parse(self.text, self.names)
        if not calls:
            return [{"content": content}] if content else []
        self.called = True
        return self._call_deltas([(c.name, c.arguments) for c in calls])

    def _calls_so_far(self) -> list[tuple[str | None, str]]:
        if self.mode == "named":
            return [(self.name, self.text)]
        return scan_calls(self.text)

    def _call_deltas(self, calls: list[tuple[str | None, str]]) -> list[dict[str, Any]]:
        out = []
        for i, (name, args) in enumerate(calls):
            if name is None:
                break
            if i == len(self.sent):
                self.sent.append(_Sent(call_id()))
            sent = self.sent[i]
            if not sent.name_sent:  # OpenAI's order: id and name (arguments ""), then pieces
                sent.name_sent = True
                fn = {"name": name, "arguments": ""}
                out.append(
                    {
                        "tool_calls": [
                            {"index": i, "id": sent.id, "type": "function", "function": fn}
                        ]
                    }
                )
            piece = args[sent.args_sent :]
            if piece:
                sent.args_sent = len(args)
                out.append({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        return out

    # ---- whole -------------------------------------------------------------------------------

    def message(self) -> dict[str, Any]:
        """The assistant message's content and tool calls for the whole text."""
        if self.mode == "auto":
            content, parsed = self.parser.parse(self.text, self.names)
        else:
            content = None
            parsed = [ParsedCall(n, a) for n, a in self._calls_so_far() if n is not None]
        self.called = bool(parsed)
        if not parsed:
            return {"role": "assistant", "content": content}
        while len(self.sent) < len(parsed):
            self.sent.append(_Sent(call_id()))
        calls = [
            {"id": s.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for s, c in zip(self.sent, parsed, strict=False)
        ]
        return {"role": "assistant", "content": content, "tool_calls": calls}


def scan_calls(text: str) -> list[tuple[str | None, str]]:
    """The calls in a (possibly unfinished) `[{"name": ..., "parameters": ...}, ...]` text, as
    (name or None while it is incomplete, the parameters' text so far). Relies on the order the
    required-call schema fixes: name first, then parameters."""
    calls: list[tuple[str | None, str]] = []
    pos = 0
    while True:
        start = text.find('"name"', pos)
        if start < 0:
            return calls
        colon = text.find(":", start + 6)
        quote = text.find('"', colon + 1) if colon >= 0 else -1
        if quote < 0:
            return calls + [(None, "")]
        end = _string_end(text, quote)
        if end < 0:
            return calls + [(None, "")]
        name = json.loads(text[quote : end + 1])
        key = text.find('"parameters"', end)
        colon = text.find(":", key + 12) if key >= 0 else -1
        if colon < 0:
            return calls + [(name, "")]
        value_start = colon + 1
        while value_start < len(text) and text[value_start] in " \t\r\n":
            value_start += 1
        value_end = _value_end(text, value_start)
        calls.append((name, text[value_start:value_end]))
        if value_end >= len(text):
            return calls
        pos = value_end


def _string_end(text: str, quote: int) -> int:
    """Index of the quote closing the JSON string that opens at `quote`, or -1."""
    i = quote + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _value_end(text: str, start: int) -> int:
    """End (exclusive) of the JSON value starting at `start`, or len(text) while unfinished."""
    if start >= len(text):
        return len(text)
    if text[start] == '"':
        end = _string_end(text, start)
        return len(text) if end < 0 else end + 1
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if end < 0:
                return len(text)
            i = end + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            if depth == 0:
                return i
            depth -= 1
            if depth == 0:
                return i + 1
        elif c in ", \t\r\n" and depth == 0:
            return i
        i += 1
    return len(text)
