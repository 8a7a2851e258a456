"""Mid-stream failover: a herd replica's stream that breaks after the client got its first event
continues on another replica, and the client sees one uninterrupted stream.

The gateway asks herd replicas for token ids (`return_token_ids`) and strips them before the
client sees them (unless it asked). On a break it sends the prompt's token ids plus the tokens
whose text already reached the client to /v1/completions on another replica, for the tokens
left, and rewrites that stream into the original's shape (its id, object, chat deltas) with
usage counted over both. Greedy and seeded requests continue exactly: the seeded sampler
depends only on seed and absolute position. Only requests where the continuation is the same
computation are resumed (one choice, no stop strings, no logprobs, no penalties on output)."""

from __future__ import annotations

import json
from typing import Any

# Fields under which a request is not resumed: the continuation would not equal the original.
# (stop strings: text held back at the break is lost; penalties: output tokens would be prompt.)
_NOT_RESUMABLE = ("stop", "logprobs", "top_logprobs", "best_of", "suffix",
                  "presence_penalty", "frequency_penalty", "logit_bias")  # fmt: skip
OPENAI_COMPLETION_DEFAULT = 16  # /v1/completions without max_tokens (OpenAI's default)


def resumable(payload: dict[str, Any]) -> bool:
    """Whether a stream of this request may be resumed on another replica."""
    if not payload.get("stream") or payload.get("n") not in (None, 1):
        return False
    return not any(payload.get(name) for name in _NOT_RESUMABLE)


class StreamResume:
    """One resumable stream's state: the prompt's token ids, the tokens whose text reached the
    client, the envelope the client saw first. Renders upstream events for the client (token
    ids stripped unless asked for) and builds and rewrites continuations."""

    def __init__(self, endpoint: str, payload: dict[str, Any]):
        self.chat = endpoint == "chat/completions"
        self.payload = payload
        self.wants_ids = bool(payload.get("return_token_ids"))
        self.prompt_ids: list[int] | None = None
        self.committed: list[int] = []  # their text has reached the client
        self.pending: list[int] = []  # sent, text still held back by the replica
        self.head: dict[str, Any] = {}
        self.base = 0  # tokens generated before the current continuation began
        self.continuing = False

    def upstream_body(self) -> bytes:
        return json.dumps({**self.payload, "return_token_ids": True}).encode()

    @property
    def ready(self) -> bool:
        """The replica reported token ids: a break can be resumed."""
        return self.prompt_ids is not None

    def rewrites(self, obj: dict[str, Any]) -> bool:
        """Whether `render` changes this event (else it may be forwarded byte for byte)."""
        if self.continuing:
            return True
        has_ids = "prompt_token_ids" in obj or any(
            "token_ids" in c for c in obj.get("choices") or () if isinstance(c, dict)
        )
        return has_ids and not self.wants_ids

    def render(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An upstream event as the client should see it; notes ids and text on the way."""
        if self.continuing:
            obj = self._continued(obj)
        elif not self.head and "choices" in obj:
            self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
            if "system_fingerprint" in obj:
                self.head["system_fingerprint"] = obj["system_fingerprint"]
        if "prompt_token_ids" in obj:
            ids = obj["prompt_token_ids"] if not self.continuing else None
            if ids is not None and self.prompt_ids is None:
                self.prompt_ids = list(ids)
            if not self.wants_ids or self.continuing:
                obj = {k: v for k, v in obj.items() if k != "prompt_token_ids"}
        for choice in obj.get("choices") or ():
            self.pending += choice.get("token_ids") or []
            text = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if text or choice.get("finish_reason"):
                self.committed += self.pending
                self.pending = []
            if not self.wants_ids:
                choice.pop("token_ids", None)
        return obj

    def continuation(self) -> tuple[str, bytes] | None:
        """(endpoint, body) that continues the stream on another replica; None if no tokens
        are left to generate."""
        p = self.payload
        limit = p.get("max_completion_tokens") or p.get("max_tokens")
        if limit is None and not self.chat:
            limit = OPENAI_COMPLETION_DEFAULT
        self.base = len(self.committed)
        self.pending = []
        if limit is not None and limit - self.base <= 0:
            return None
        body = {k: v for k, v in p.items() if k not in ("messages", "max_completion_tokens")}
        body.update(prompt=self.prompt_ids + self.committed, echo=False, return_token_ids=True)
        if limit is not None:
            body["max_tokens"] = limit - self.base
        if p.get("min_tokens"):
            body["min_tokens"] = max(0, p["min_tokens"] - self.base)
        self.continuing = True
        return "completions", json.dumps(body).encode()

    def _continued(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A /v1/completions chunk of the continuation in the original stream's shape."""
        out: dict[str, Any] = dict(self.head)
        choices = []
        for c in obj.get("choices") or ():
            text = c.get("text") or ""
            if self.chat:
                item = {"index": 0, "delta": {"content": text} if text else {}, "logprobs": None}
            else:
                item = {"index": 0, "text": text, "logprobs": None}
            item["finish_reason"] = c.get("finish_reason")
            if c.get("token_ids"):
                item["token_ids"] = c["token_ids"]
            choices.append(item)
        out["choices"] = choices
        if obj.get("usage"):
            u = obj["usage"]
            prompt = len(self.prompt_ids or ())
            completion = self.base + int(u.get("completion_tokens") or 0)
            out["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}  # fmt: skip
        elif "usage" in obj:
            out["usage"] = None
        return out
