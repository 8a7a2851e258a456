"""Request parsing: an OpenAI completions / chat body -> `GenerateRequest` with `SamplingParams`.

Every field is type-checked; every accepted field is honoured; anything else is a 400 naming the
parameter. herd's extensions (vLLM's names) are listed in `EXTENSIONS`."""

import math
from dataclasses import dataclass, field
from typing import Any

from herd.engine.errors import InvalidRequestError
from herd.engine.sampling_params import SamplingParams
from herd.server.errors import bad_request

# herd extensions accepted by both endpoints, with their JSON types.
EXTENSIONS = {
    "priority": "int",  # lower runs first (vLLM convention)
    "top_k": "int",
    "min_p": "float",
    "ignore_eos": "bool",
    "min_tokens": "int",
    "return_token_ids": "bool",  # token ids in every choice; prompt ids in the first chunk
    "repetition_penalty": "float",
    "stop_token_ids": "int_list",
    "include_stop_str_in_output": "bool",
    "skip_special_tokens": "bool",
}
COMMON = {
    "model": "str",
    "max_tokens": "int",
    "temperature": "float",
    "top_p": "float",
    "n": "int",
    "stream": "bool",
    "stream_options": "dict",
    "stop": "stop",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "logit_bias": "dict",
    "user": "str",
    "seed": "int",
}
COMPLETION_FIELDS = {
    **COMMON,
    **EXTENSIONS,
    "prompt": "any",
    "suffix": "str",
    "logprobs": "int",
    "echo": "bool",
    "best_of": "int",
}
CHAT_FIELDS = {
    **COMMON,
    **EXTENSIONS,
    "messages": "list",
    "max_completion_tokens": "int",
    "logprobs": "bool",
    "top_logprobs": "int",
    "response_format": "dict",
    "tools": "list",
    "tool_choice": "any",
    "parallel_tool_calls": "bool",
    "store": "bool",
}
CHAT_ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 16  # stop strings per request


@dataclass
class GenerateRequest:
    """One validated request, endpoint-neutral; the server renders the reply from it."""

    chat: bool
    model: str | None
    params: SamplingParams
    prompt: str | list[int] | None = None  # completions: text or token ids
    # completions: OpenAI's batch form (several prompts); choices are numbered prompt-major
    prompts: list[str | list[int]] | None = None
    messages: list[dict] | None = None  # chat: [{"role", "content": str}]
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    priority: int = 0
    return_token_ids: bool = False
    echo: bool = False  # completions: prompt text before the completion
    max_tokens_default: bool = False  # max_tokens was not given (may be clamped to the context)
    user: str | None = None  # caller's end-user id: logged, never interpreted
    extra: dict[str, Any] = field(default_factory=dict)


def _typed(body: dict, name: str, kind: str) -> Any:
    value = body.get(name)
    if value is None or kind == "any":
        return value
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "dict": isinstance(value, dict),
        "list": isinstance(value, list),
        "int_list": isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        "stop": isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
    }[kind]
    if not ok:
        want = {
            "int": "an integer",
            "float": "a finite number",
            "bool": "a boolean",
            "str": "a string",
            "dict": "an object",
            "list": "an array",
            "int_list": "an array of integers",
            "stop": "a string or an array of strings",
        }[kind]
        raise bad_request(f"'{name}' must be {want}, got {type(value).__name__}", name)
    return float(value) if kind == "float" else value


def _read(body: Any, spec: dict[str, str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise bad_request(f"unrecognized request argument: '{unknown[0]}'", unknown[0])
    return {name: _typed(body, name, kind) for name, kind in spec.items() if name in body}


def _refuse_unless(cond: bool, name: str, why: str) -> None:
    if not cond:
        raise bad_request(f"'{name}' {why}", name)


def _sampling(f: dict[str, Any], max_tokens: int | None, logprobs: int | None, max_n: int):
    n = 1 if f.get("n") is None else f["n"]
    _refuse_unless(1 <= n <= max_n, "n", f"must be in [1, {max_n}], got {n}")
    stop = f.get("stop")
    _refuse_unless(
        stop is None or isinstance(stop, str) or len(stop) <= MAX_STOP,
        "stop",
        f"takes at most {MAX_STOP} strings",
    )
    _refuse_unless(not f.get("logit_bias"), "logit_bias", "is not supported")
    kwargs = dict(
        n=n,
        max_tokens=max_tokens,
        logprobs=logprobs,
        stop=stop,
        seed=f.get("seed"),
        stop_token_ids=f.get("stop_token_ids"),
    )
    for name, default in (
        ("temperature", 1.0),
        ("top_p", 1.0),
        ("top_k", 0),
        ("min_p", 0.0),
        ("presence_penalty", 0.0),
        ("frequency_penalty", 0.0),
        ("repetition_penalty", 1.0),
        ("min_tokens", 0),
        ("ignore_eos", False),
        ("include_stop_str_in_output", False),
        ("skip_special_tokens", True),
    ):
        kwargs[name] = f.get(name, default) if f.get(name) is not None else default
    try:
        return SamplingParams(**kwargs)
    except InvalidRequestError as exc:
        raise bad_request(exc.message, exc.param) from None


def _common(f: dict[str, Any], chat: bool, params: SamplingParams, max_tokens_default: bool):
    stream = bool(f.get("stream"))
    options = f.get("stream_options")
    if options is not None:
        _refuse_unless(stream, "stream_options", "is only allowed when 'stream' is true")
        unknown = sorted(set(options) - {"include_usage"})
        _refuse_unless(not unknown, "stream_options", f"has unknown key(s) {unknown}")
        _refuse_unless(
            isinstance(options.get("include_usage", False), bool),
            "stream_options",
            "include_usage must be a boolean",
        )
    return GenerateRequest(
        chat=chat,
        model=f.get("model"),
        params=params,
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        priority=f.get("priority") or 0,
        return_token_ids=bool(f.get("return_token_ids")),
        max_tokens_default=max_tokens_default,
        user=f.get("user"),
    )


def _prompts(value: Any, max_batch: int) -> list[str | list[int]]:
    """One prompt (text or token ids) or a batch of them (a list of texts or of id lists)."""
    if isinstance(value, str) or (isinstance(value, list) and value and _is_ids(value[0])):
        return [_one_prompt(value)]
    if isinstance(value, list) and value and all(isinstance(v, str | list) for v in value):
        _refuse_unless(len(value) <= max_batch, "prompt", f"may hold at most {max_batch} prompts")
        return [_one_prompt(v) for v in value]
    raise bad_request(
        "'prompt' must be a string, an array of token ids, or an array of either", "prompt"
    )


def _is_ids(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_prompt(value: Any) -> str | list[int]:
    if isinstance(value, str):
        return value
    _refuse_unless(
        isinstance(value, list) and value and all(_is_ids(t) and t >= 0 for t in value),
        "prompt",
        "token ids must be a non-empty array of non-negative integers",
    )
    return value


def parse_completion(body: Any, max_n: int = 64, max_logprobs: int = 20) -> GenerateRequest:
    f = _read(body, COMPLETION_FIELDS)
    _refuse_unless("prompt" in f and f["prompt"] is not None, "prompt", "is required")
    prompts = _prompts(f["prompt"], max_n)
    _refuse_unless(f.get("suffix") in (None, ""), "suffix", "is not supported")
    logprobs = f.get("logprobs")
    _refuse_unless(
        logprobs is None or 0 <= logprobs <= max_logprobs,
        "logprobs",
        f"must be in [0, {max_logprobs}]",
    )
    _refuse_unless(
        not (f.get("echo") and logprobs is not None),
        "echo",
        "together with logprobs is not supported",
    )
    default = f.get("max_tokens") is None
    params = _sampling(f, 16 if default else f["max_tokens"], logprobs, max_n)
    best_of = f.get("best_of")
    _refuse_unless(
        best_of in (None, params.n), "best_of", "must equal n (herd returns every sample)"
    )
    req = _common(f, False, params, default)
    req.prompt, req.prompts = prompts[0], prompts
    req.echo = bool(f.get("echo"))
    return req


def _messages(value: Any) -> list[dict]:
    _refuse_unless(isinstance(value, list) and value, "messages", "must be a non-empty array")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        _refuse_unless(isinstance(msg, dict), where, "must be an object")
        unknown = sorted(set(msg) - {"role", "content", "name"})
        _refuse_unless(not unknown, where, f"has unsupported key(s) {unknown}")
        _refuse_unless(
            msg.get("role") in CHAT_ROLES, f"{where}.role", f"must be one of {CHAT_ROLES}"
        )
        _refuse_unless(
            msg.get("name") is None or isinstance(msg["name"], str),
            f"{where}.name",
            "must be a string",
        )
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                _refuse_unless(
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str),
                    f"{where}.content",
                    "parts must be {'type': 'text', 'text': str} (no images or audio)",
                )
                parts.append(part["text"])
            content = "".join(parts)
        _refuse_unless(
            isinstance(content, str), f"{where}.content", "must be a string or text parts"
        )
        out.append({"role": msg["role"], "content": content})
    return out


def parse_chat(body: Any, max_n: int = 64, max_logprobs: int = 20) -> GenerateRequest:
    f = _read(body, CHAT_FIELDS)
    messages = _messages(f.get("messages"))
    a, b = f.get("max_completion_tokens"), f.get("max_tokens")
    _refuse_unless(
        a is None or b is None or a == b, "max_completion_tokens", "and max_tokens disagree"
    )
    max_tokens = a if a is not None else b
    top = f.get("top_logprobs")
    _refuse_unless(top is None or f.get("logprobs"), "top_logprobs", "needs 'logprobs': true")
    _refuse_unless(
        top is None or 0 <= top <= max_logprobs, "top_logprobs", f"must be in [0, {max_logprobs}]"
    )
    logprobs = (top or 0) if f.get("logprobs") else None
    fmt = f.get("response_format")
    _refuse_unless(fmt in (None, {"type": "text"}), "response_format", "only {'type': 'text'}")
    _refuse_unless(not f.get("tools"), "tools", "are not supported")
    _refuse_unless(f.get("tool_choice") in (None, "none"), "tool_choice", "must be 'none'")
    _refuse_unless(not f.get("store"), "store", "is not supported")
    params = _sampling(f, max_tokens, logprobs, max_n)
    req = _common(f, True, params, max_tokens is None)
    req.messages = messages
    return req
