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

    def reserve_tokens(self, chars_per_token: float, default_max_tokens: int) -> int:
        """Upper-ish estimate of prompt + completion tokens, reserved before the request runs."""
        prompt = math.ceil(len(self.prompt_text.encode()) / chars_per_token)
        per_completion = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return prompt + self.completions * per_completion


def _prompt_text(endpoint: str, payload: dict[str, Any]) -> str:
    if endpoint == "chat/completions":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(400, "'messages' must be a non-empty list", param="messages")
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', '') if isinstance(m, dict) else ''}:{content or ''}\n")
        return "".join(parts)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    if isinstance(prompt, list) and prompt and all(_is_ids(p) for p in prompt):
        return _ids_text(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt):
        if all(_is_ids(t) for p in prompt for t in p):  # a batch of token-id prompts
            return "\n".join(_ids_text(p) for p in prompt)
    raise GatewayError(
        400,
        "'prompt' must be a string, token ids, or a list of either",
        param="prompt",
    )


def _is_ids(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids_text(ids: list[int]) -> str:
    return " ".join(map(str, ids))  # token ids: a stable key, ~1 char per token is wrong


def _num_prompts(endpoint: str, payload: dict[str, Any]) -> int:
    prompt = payload.get("prompt")
    if endpoint == "completions" and isinstance(prompt, list) and prompt:
        if all(isinstance(p, str | list) for p in prompt):
            return len(prompt)
    return 1


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
    prompt = _prompt_text(endpoint, payload)
    n = payload.get("n", 1)
    n = n if _is_ids(n) and n > 0 else 1  # the replica judges a bad n; this is only an estimate
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
        completions=_num_prompts(endpoint, payload) * n,
        deterministic=deterministic,
        route=route,
    )
