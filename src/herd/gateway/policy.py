"""Content policy: built-in rules (deny patterns, a maximum prompt size per QoS class) and an
optional classifier (any OpenAI-compatible `/v1/moderations` or `/v1/chat/completions` endpoint,
e.g. Llama Guard served by herd), applied to prompts on the way in and to answers on the way out.

A refused prompt is a 400 `content_filter` (Azure OpenAI's code) or a 403 `prompt_too_large`; an
answer is cut where it breaks the policy and ends with `finish_reason: "content_filter"`, as
OpenAI's do. Streamed output is checked as it flows: patterns on every event, the classifier
each time `classifier_every_chars` more characters arrived and before the stream's last event."""

from __future__ import annotations

import logging
import re
from typing import Any

import aiohttp

from herd.gateway.config import ConfigError, ContentPolicyConfig
from herd.gateway.errors import GatewayError
from herd.gateway.qos import QosClass

log = logging.getLogger(__name__)

TAIL_CHARS = 1024  # earlier output kept per choice so a pattern split across events still matches
FILTERED = "content_filter"


class ContentPolicy:
    """One gateway's content rules. `check_prompt` refuses a prompt (raises `GatewayError`);
    `screen()` gives a per-request `OutputScreen` for the answer (None when output is not
    checked). A classifier that cannot be reached allows the text unless `fail_closed`."""

    def __init__(self, config: ContentPolicyConfig):
        self.config = config
        try:
            self.patterns = [re.compile(p, re.IGNORECASE) for p in config.deny_patterns]
        except re.error as exc:
            raise ConfigError(f"content_policy.deny_patterns: {exc}") from None
        self.session: aiohttp.ClientSession | None = None  # set when the gateway starts

    @property
    def checks_output(self) -> bool:
        return self.config.check_output and bool(self.patterns or self.config.classifier_url)

    def matches(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)

    async def check_prompt(self, prompt: str, cls: QosClass) -> None:
        if cls.max_prompt_chars is not None and len(prompt) > cls.max_prompt_chars:
            raise GatewayError(
                403,
                f"the prompt has {len(prompt)} characters; the {cls.name!r} class allows at most "
                f"{cls.max_prompt_chars}",
                param="messages",
                code="prompt_too_large",
            )
        if self.matches(prompt) or await self.flagged(prompt):
            raise GatewayError(400, "the prompt was refused by the content policy", code=FILTERED)

    async def flagged(self, text: str) -> bool:
        """The classifier's verdict (False without one)."""
        c = self.config
        if not c.classifier_url or not text:
            return False
        headers = (
            {"Authorization": f"Bearer {c.classifier_api_key}"} if c.classifier_api_key else {}
        )
        moderation = c.classifier_url.rstrip("/").endswith("moderations")
        body: dict[str, Any] = (
            {"model": c.classifier_model, "input": text}
            if moderation
            else {
                "model": c.classifier_model,
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": text}],
            }  # fmt: skip
        )
        try:
            timeout = aiohttp.ClientTimeout(total=c.classifier_timeout_s)
            async with self.session.post(
                c.classifier_url, json=body, headers=headers, timeout=timeout
            ) as resp:
                resp.raise_for_status()
                data = await resp.json()
            if moderation:
                return any(r.get("flagged") for r in data.get("results", []))
            answer = data["choices"][0]["message"]["content"] or ""
            return answer.strip().lower().startswith("unsafe")  # Llama Guard: "unsafe\nS1"
        except (
            aiohttp.ClientError,
            TimeoutError,
            ValueError,
            KeyError,
            IndexError,
            TypeError,
        ) as exc:
            log.warning("content classifier failed: %s", exc)
            if c.fail_closed:
                raise GatewayError(
                    503, "the content classifier is unavailable", code="classifier_unavailable",
                    headers={"Retry-After": "1"},
                ) from None  # fmt: skip
            return False

    def screen(self) -> OutputScreen | None:
        return OutputScreen(self) if self.checks_output else None


class OutputScreen:
    """Checks one answer as it flows. `feed(index, text)` (synchronous, per event) says whether
    the text so far breaks a deny pattern; `release(final)` (async) runs the classifier once
    enough new text arrived, or always when `final`. Once blocked (a pattern) or refused (the
    classifier) it stays so."""

    def __init__(self, policy: ContentPolicy):
        self.policy = policy
        self.blocked = False  # a deny pattern matched
        self.refused = False  # the classifier flagged the answer
        self._tails: dict[int, str] = {}
        self._texts: dict[int, list[str]] = {}
        self._unchecked = 0  # characters not yet seen by the classifier

    def feed(self, index: int, text: str) -> bool:
        """True when the answer may go on; False once it broke the policy."""
        if self.blocked or self.refused:
            return False
        tail = self._tails.get(index, "") + text
        self._tails[index] = tail[-TAIL_CHARS:]
        self._texts.setdefault(index, []).append(text)
        self._unchecked += len(text)
        if self.policy.matches(tail):
            self.blocked = True
        return not self.blocked

    async def release(self, final: bool) -> bool:
        """True when what was fed may be sent as far as the classifier is concerned (it agrees,
        or it is not due yet); deny patterns are `feed`'s job."""
        if self.refused:
            return False
        c = self.policy.config
        due = self._unchecked >= c.classifier_every_chars or (final and self._unchecked)
        if c.classifier_url and due:
            self._unchecked = 0
            text = "\n".join("".join(parts) for parts in self._texts.values())
            self.refused = await self.policy.flagged(text)
        return not self.refused


async def screen_answer(data: dict, screen: OutputScreen, chat: bool) -> bool:
    """Screen a whole (non-streaming) answer; a blocked choice loses its text and ends with
    finish_reason content_filter. True when anything was blocked."""
    for choice in data.get("choices") or []:
        i = choice.get("index", 0)
        text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
        screen.feed(i, text)
    if not screen.blocked and await screen.release(final=True):
        return False
    for choice in data.get("choices") or []:
        if chat:
            choice["message"] = {**(choice.get("message") or {}), "content": ""}
        else:
            choice["text"] = ""
        choice["finish_reason"] = FILTERED
    return True
