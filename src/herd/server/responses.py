"""Renders engine deltas as OpenAI JSON: whole responses and SSE stream chunks for
/v1/completions and /v1/chat/completions, logprobs and usage included."""

import time
from dataclasses import dataclass, field
from typing import Any

from herd.engine.outputs import CompletionOutput, RequestOutput
from herd.protocol.sse import DONE, encode_json
from herd.server.protocol import GenerateRequest
from herd.server.tool_calls import ToolCallStream
from herd.server.tool_parsers import ToolParser


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # rendered entries, endpoint-specific
    text_offset: int = 0  # completions logprobs: characters before the next token
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    tools: ToolCallStream | None = None  # chat with tools: the text read as tool calls

    def reason(self, finish_reason: str | None) -> str | None:
        """OpenAI's finish_reason: "tool_calls" when the choice stopped after calling tools."""
        if finish_reason == "stop" and self.tools is not None and self.tools.called:
            return "tool_calls"
        return finish_reason


class Renderer:
    """Accumulates one request's deltas; renders chunks as they come or the whole reply at the
    end. `chat` switches object names, message vs text and the logprobs format."""

    def __init__(
        self,
        req: GenerateRequest,
        request_id: str,
        model: str,
        tokenizer: Any,
        parser: ToolParser | None = None,
    ) -> None:
        self.req = req
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.tokenizer = tokenizer
        self.choices = [_Choice() for _ in range(req.params.n)]
        if req.tool_mode is not None and parser is not None:
            names = {t["function"]["name"] for t in req.tools or []}
            for c in self.choices:
                c.tools = ToolCallStream(req.tool_mode, parser, names, req.tool_name)
        self.prompt_token_ids: list[int] = []
        self.prompt_logprobs: list | None = None  # engine's, when prompt_logprobs was asked
        self.num_cached_tokens = 0
        self.prompt_text: str | None = None  # echo (completions); see echo_text
        self._token_str: dict[int, str] = {}
        self._started = False
        self.index_offset = 0  # a batch of prompts: this prompt's first choice index
        self.in_batch = False  # a batch: each choice carries its own prompt_token_ids

    # ---- pieces ----------------------------------------------------------------------------

    def _tok(self, token_id: int) -> str:
        text = self._token_str.get(token_id)
        if text is None:
            text = self._token_str[token_id] = self.tokenizer.decode(
                [token_id], skip_special_tokens=False
            )
        return text

    def _logprobs(self, choice: _Choice, out: CompletionOutput) -> list[Any] | None:
        if self.req.params.logprobs is None or out.logprobs is None:
            return None
        k = self.req.params.logprobs
        entries = []
        for token_id, lps in zip(out.token_ids, out.logprobs, strict=False):
            top = sorted(lps.items(), key=lambda kv: -kv[1])[:k]
            token = self._tok(token_id)
            if self.req.chat:
                entries.append(
                    {
                        "token": token,
                        "logprob": lps.get(token_id, float("-inf")),
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {
                                "token": self._tok(t),
                                "logprob": lp,
                                "bytes": list(self._tok(t).encode()),
                            }
                            for t, lp in top
                        ],
                    }
                )
            else:
                entries.append(
                    (token, lps.get(token_id, float("-inf")), {self._tok(t): lp for t, lp in top})
                )
        choice.logprobs.extend(entries)
        return entries

    def _completion_logprobs(self, entries: list[Any], offset: int) -> dict:
        offsets = []
        for token, _, _ in entries:
            offsets.append(offset)
            offset += len(token)
        return {
            "tokens": [e[0] for e in entries],
            "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [e[2] for e in entries],
            "text_offset": offsets,
        }

    def usage(self) -> dict:
        completion = sum(len(c.token_ids) for c in self.choices)
        prompt = len(self.prompt_token_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.num_cached_tokens},
        }

    def _envelope(self, choices: list[dict], chunk: bool) -> dict:
        if self.req.chat:
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        body = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.req.return_token_ids and not chunk:
            body["prompt_token_ids"] = self.prompt_token_ids
        return body

    # ---- consuming deltas ------------------------------------------------------------------

    def add(self, out: RequestOutput) -> list[dict]:
        """Fold one delta in; return the stream chunks' choices for it (possibly empty)."""
        if not self.prompt_token_ids:
            self._take_prompt(out)
        rendered = []
        for delta in out.outputs:
            choice = self.choices[delta.index]
            entries = self._logprobs(choice, delta)
            choice.text.append(delta.text)
            choice.token_ids.extend(delta.token_ids)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
                choice.stop_reason = delta.stop_reason
            if not (delta.text or delta.token_ids or delta.finish_reason):
                continue
            item: dict[str, Any] = {"index": self.index_offset + delta.index}
            if self.req.chat and choice.tools is not None:
                rendered += self._tool_items(choice, delta, item, entries)
                continue
            if self.req.chat:
                item["delta"] = {"content": delta.text} if delta.text else {}
                item["logprobs"] = {"content": entries} if entries is not None else None
            else:
                item["text"] = delta.text
                item["logprobs"] = None
                if entries is not None:
                    item["logprobs"] = self._completion_logprobs(entries, choice.text_offset)
                choice.text_offset += sum(len(e[0]) for e in entries or [])
            item["finish_reason"] = delta.finish_reason
            if self.req.return_token_ids:
                item["token_ids"] = list(delta.token_ids)
            rendered.append(item)
        return rendered

    def _tool_items(
        self, choice: _Choice, delta: CompletionOutput, item: dict, entries: list | None
    ) -> list[dict]:
        """A chat delta of a choice read as tool calls: one item per chat delta (the last one
        carries the finish reason and the step's logprobs and token ids)."""
        deltas = choice.tools.feed(delta.text)
        if delta.finish_reason is not None:
            deltas += choice.tools.finish()
        items = [dict(item, delta=d, logprobs=None, finish_reason=None) for d in deltas]
        quiet = entries is None and not self.req.return_token_ids
        if not items and delta.finish_reason is None and quiet:
            return []  # text held back (it may become a call): nothing to say yet
        if not items:
            items = [dict(item, delta={}, logprobs=None, finish_reason=None)]
        last = items[-1]
        last["logprobs"] = {"content": entries} if entries is not None else None
        last["finish_reason"] = choice.reason(delta.finish_reason)
        if self.req.return_token_ids:
            last["token_ids"] = list(delta.token_ids)
        return items

    def _take_prompt(self, out: RequestOutput) -> None:
        """The prompt's facts, from the first delta (prompt logprobs come with it)."""
        self.prompt_token_ids = list(out.prompt_token_ids)
        self.num_cached_tokens = out.num_cached_tokens
        self.prompt_logprobs = out.prompt_logprobs

    def echo_text(self) -> str:
        """The prompt as text for echo; token ids are decoded only once the engine has accepted
        them (an id past the vocabulary is the engine's 400, not a decode error)."""
        if self.prompt_text is None:
            self.prompt_text = self.tokenizer.decode(self.prompt_token_ids)
        return self.prompt_text

    # ---- streaming -------------------------------------------------------------------------

    def first_chunks(self) -> bytes:
        """What a stream starts with: the assistant role (chat) or the echoed prompt."""
        if self.req.chat:
            items = [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(len(self.choices))
            ]
        elif self.req.echo:
            items = [
                {
                    "index": self.index_offset + i,
                    "text": self.echo_text(),
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(len(self.choices))
            ]
        else:
            return b""
        return self._chunk(items)

    def _chunk(self, items: list[dict]) -> bytes:
        body = self._envelope(items, chunk=True)
        if self.req.include_usage:  # the counts so far, or null until the usage chunk
            body["usage"] = self.usage() if self.req.continuous_usage else None
        if self.req.return_token_ids and not self._started:
            body["prompt_token_ids"] = self.prompt_token_ids
        self._started = True
        return encode_json(body)

    def stream_chunk(self, out: RequestOutput) -> bytes:
        data = b""
        if not self._started:  # the opening chunk counts no completion tokens yet
            if not self.prompt_token_ids:
                self._take_prompt(out)
            data = self.first_chunks()
        chunk: list[dict] = []
        for item in self.add(out):  # a choice appears at most once per chunk
            if any(c["index"] == item["index"] for c in chunk):
                data += self._chunk(chunk)
                chunk = []
            chunk.append(item)
        if chunk:
            data += self._chunk(chunk)
        return data

    def stream_end(self, usage: dict | None = None) -> bytes:
        """The usage chunk (when asked for; `usage` overrides this request's own, for a batch)
        and [DONE]."""
        data = b""
        if self.req.include_usage:
            body = self._envelope([], chunk=True)
            body["usage"] = usage or self.usage()
            data += encode_json(body)
        return data + DONE

    # ---- whole response --------------------------------------------------------------------

    def response(self) -> dict:
        choices = []
        for i, c in enumerate(self.choices):
            text = "".join(c.text)
            item: dict[str, Any] = {"index": self.index_offset + i}
            if self.req.chat:
                message = {"role": "assistant", "content": text}
                item["message"] = c.tools.message() if c.tools is not None else message
                item["logprobs"] = (
                    {"content": c.logprobs} if self.req.params.logprobs is not None else None
                )
            else:
                item["text"] = (self.echo_text() if self.req.echo else "") + text
                item["logprobs"] = (
                    self._completion_logprobs(c.logprobs, 0)
                    if self.req.params.logprobs is not None
                    else None
                )
            item["finish_reason"] = c.reason(c.finish_reason)
            item["stop_reason"] = c.stop_reason
            if self.req.return_token_ids:
                item["token_ids"] = c.token_ids
                if self.in_batch:
                    item["prompt_token_ids"] = self.prompt_token_ids
            if self.req.params.prompt_logprobs is not None:
                item["prompt_logprobs"] = self._prompt_logprobs()
            choices.append(item)
        body = self._envelope(choices, chunk=False)
        body["usage"] = self.usage()
        return body

    def _prompt_logprobs(self) -> list[dict | None] | None:
        """vLLM's format: per prompt position None (the first) or token id -> logprob entry."""
        if self.prompt_logprobs is None:
            return None
        return [
            None
            if lps is None
            else {
                str(t): {
                    "logprob": float(lp),
                    "rank": getattr(lp, "rank", None),
                    "decoded_token": self._tok(t),
                }
                for t, lp in lps.items()
            }
            for lps in self.prompt_logprobs
        ]


def batch_usage(renderers: list["Renderer"]) -> dict:
    """Usage of a batch of prompts: every count added up."""
    usages = [r.usage() for r in renderers]
    total = {
        k: sum(u[k] for u in usages) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    return dict(total, prompt_tokens_details={"cached_tokens": cached})
