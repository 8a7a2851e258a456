"""What the gateway needs to know about one OpenAI request, read once from its JSON body.

The body is forwarded to the replica byte for byte; this only extracts the model, the routing
keys, a token estimate for rate limits and whether the answer is reproducible (cacheable)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from herd.gateway.errors import GatewayError
from herd.gateway.routing import RouteRequest
from herd.protocol.prompts import (
    PromptError,
    content_text,
    is_token_id,
    parse_prompts,
    prompt_key,
)


@dataclass
class RequestInfo:
    """What the gateway needs to know about a request, parsed once from its body: endpoint, model,
    streaming, prompt text, max_tokens, number of completions, whether the answer is
    deterministic (cacheable), and the routing keys. The forwarded bytes are the client's bytes
    unchanged."""

    endpoint: str  # "chat/completions" or "completions"
    body: bytes  # the bytes forwarded upstream
    payload: dict[str, Any]  # parsed body
    model: str
    stream: bool
    prompt_text: str  # prompt or concatenated message contents
    max_tokens: int | None
    completions: int  # sequences the request generates: prompts in a batch x n
    deterministic: bool  # temperature 0 or a seed: the same request gives the same answer
    route: RouteRequest
    screen: Any = None  # herd.gateway.policy.OutputScreen checking the answer, or None

    def body_for(self, model: str | None) -> bytes:
        """The bytes to forward: the client's, or with `model` swapped in for a fallback replica
        (which then answers under its own model name, so the client sees who answered)."""
        if model is None or model == self.model:
            return self.body
        return json.dumps({**self.payload, "model": model}).encode()

    def reserve_tokens(self, chars_per_token: float, default_max_tokens: int) -> int:
        """Upper-ish estimate of prompt + completion tokens, reserved before the request runs."""
        prompt = math.ceil(len(self.prompt_text.encode()) / chars_per_token)
        per_completion = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return prompt + self.completions * per_completion


def _prompts(endpoint: str, payload: dict[str, Any]) -> list[str]:
    """The request's prompts as text keys, parsed with the replica's grammar so both refuse the
    same bad prompts with a 400 naming the same parameter."""
    try:
        if endpoint == "chat/completions":
            return [_chat_text(payload.get("messages"))]
        return [prompt_key(p) for p in parse_prompts(payload.get("prompt"))]
    except PromptError as exc:
        raise GatewayError(400, exc.message, param=exc.param) from None


def _chat_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise PromptError("'messages' must be a non-empty array", "messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PromptError(f"'messages[{i}]' must be an object", f"messages[{i}]")
        text = content_text(m.get("content"), f"messages[{i}].content")  # required, as on a replica
        parts.append(f"{m.get('role', '')}:{text}\n")
    return "".join(parts)


def parse_request(endpoint: str, body: bytes, headers, prefix_chars: int) -> RequestInfo:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "'model' is required", param="model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(400, "'stream' must be a boolean", param="stream")
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
        raise GatewayError(400, "'max_tokens' must be a non-negative integer", param="max_tokens")
    prompts = _prompts(endpoint, payload)
    prompt = "\n".join(prompts)
    n = payload.get("n", 1)
    n = n if is_token_id(n) and n > 0 else 1  # the replica judges a bad n; this is only an estimate
    temperature = payload.get("temperature")
    deterministic = (temperature == 0 or payload.get("seed") is not None) and not (
        payload.get("logprobs") or payload.get("top_logprobs")
    )
    user = payload.get("user")
    session = headers.get("x-session-id") or (user if isinstance(user, str) and user else None)
    route = RouteRequest(model=model, session_key=session, prefix_key=prompt[:prefix_chars] or None)
    return RequestInfo(
        endpoint=endpoint,
        body=body,
        payload=payload,
        model=model,
        stream=stream,
        prompt_text=prompt,
        max_tokens=max_tokens,
        completions=len(prompts) * n,
        deterministic=deterministic,
        route=route,
    )
