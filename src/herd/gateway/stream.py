"""Server-sent events between replica and client: check, account and replay them.

`StreamAssembler` cuts the upstream byte stream into whole events, refuses garbage, counts
usage and rebuilds the whole answer (for the response cache); `replay` turns a cached answer
back into a stream."""

from __future__ import annotations

from typing import Any

from herd.protocol.sse import DONE, Event, SSEParser, encode_json


class StreamAssembler:
    """Follows one upstream SSE stream: returns whole events to forward byte for byte (LF, CRLF or
    CR framing), refuses what is not SSE, notes [DONE] and upstream error events, counts usage,
    and rebuilds the whole answer for the response cache. With a `screen` (content policy), the
    first event whose text breaks the policy and everything after it are held back: `blocked`
    is set, the stream counts as done, and `filtered_end()` is what the client gets instead."""

    def __init__(self, endpoint: str, screen=None):
        self.chat = endpoint == "chat/completions"
        self.screen = screen  # herd.gateway.policy.OutputScreen, or None
        self.blocked = False
        self.done = False  # saw [DONE] (or an upstream error event, which also ends it)
        self.upstream_error: dict | None = None
        self._parser = SSEParser()
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._head: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._content_events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Add bytes; return the complete events among them, byte for byte as the replica framed
        them (LF, CRLF or CR), ready to forward. ValueError on garbage."""
        return b"".join(e.raw for e in self.feed_events(chunk))

    def feed_events(self, chunk: bytes) -> list[Event]:
        """`feed`, returning the parsed events to forward (each keeps its raw bytes); nothing
        from the event that broke the content policy on."""
        return self._take(self._parser.feed(chunk))

    def _take(self, events: list[Event]) -> list[Event]:
        out = []
        for event in events:
            if self.blocked:
                break
            self._event(event)
            if not self.blocked:
                out.append(event)
        return out

    def close(self) -> bytes:
        """End of the upstream stream: the held-back tail (a last block that ended in a CR), if
        it completes an event."""
        return b"".join(e.raw for e in self.close_events())

    def close_events(self) -> list[Event]:
        return self._take(self._parser.close())

    def block(self) -> None:
        """The policy refused the answer: nothing more is forwarded."""
        self.blocked = self.done = True

    def filtered_end(self) -> bytes:
        """The events that end a blocked stream: finish_reason content_filter per choice, then
        [DONE] (as OpenAI ends a filtered answer)."""
        head = {**self._head, "object": "chat.completion.chunk" if self.chat else "text_completion"}
        events = []
        for i in sorted(self._finish) or [0]:
            choice = {"index": i, "finish_reason": "content_filter"}
            choice.update({"delta": {}} if self.chat else {"text": ""})
            events.append(encode_json({**head, "choices": [choice]}))
        return b"".join(events) + DONE

    def _event(self, event: Event) -> None:
        if event.unknown:
            raise ValueError("not a server-sent event")
        if event.data is None:  # a comment or keep-alive: forwarded, nothing to account
            return
        if event.is_done:
            self.done = True
            return
        obj = event.json()  # ValueError on garbage
        if not isinstance(obj, dict):
            raise ValueError("event data is not a JSON object")
        self._chunk(obj)

    def _chunk(self, obj: dict) -> None:
        if "error" in obj:
            self.upstream_error = obj["error"]
            self.done = True
            return
        if not self._head:
            self._head = {k: obj.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if obj.get("usage"):
            self._usage = obj["usage"]
        for choice in obj.get("choices") or ():
            i = choice.get("index", 0)
            text = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if text and self.screen is not None and not self.screen.feed(i, text):
                self.block()
                return
            if text:
                self._texts.setdefault(i, []).append(text)
                self._content_events += 1
            if choice.get("finish_reason") is not None:
                self._finish[i] = choice["finish_reason"]
            self._finish.setdefault(i, None)

    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens: the replica's count if it sent one, else events seen."""
        if self._usage:
            return int(self._usage.get("prompt_tokens") or 0), int(
                self._usage.get("completion_tokens") or 0
            )
        return 0, self._content_events

    def response(self) -> dict[str, Any] | None:
        """The whole answer as a non-streaming response object; None if it did not finish."""
        if not self.done or self.upstream_error is not None or self.blocked:
            return None
        choices = []
        for i in sorted(self._finish):
            text = "".join(self._texts.get(i, ()))
            if self.chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": self._finish[i],
                    }
                )
            else:
                choices.append({"index": i, "text": text, "finish_reason": self._finish[i]})
        prompt, completion = self.usage()
        return {
            **self._head,
            "object": "chat.completion" if self.chat else "text_completion",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


def replay(answer: dict[str, Any], endpoint: str, include_usage: bool = False) -> bytes:
    """A stored non-streaming answer as an SSE stream: one chunk per choice, then [DONE]."""
    chat = endpoint == "chat/completions"
    head = {k: answer.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for choice in answer.get("choices", []):
        if chat:
            message = choice.get("message") or {}
            delta = {"role": "assistant", "content": message.get("content") or ""}
            out = {"index": choice.get("index", 0), "delta": delta}
        else:
            out = {"index": choice.get("index", 0), "text": choice.get("text") or ""}
        out["finish_reason"] = choice.get("finish_reason")
        if chat or "logprobs" in choice:
            out["logprobs"] = None
        events.append({**head, "choices": [out]})
    if include_usage and answer.get("usage"):
        events.append({**head, "choices": [], "usage": answer["usage"]})
    return b"".join(encode_json(e) for e in events) + DONE
