"""The mapping from validated request models (`herd.protocol.requests`) to what the engine runs:
`GenerateRequest` with its `SamplingParams`. Parsing and validation live in herd.protocol; this
adds only the replica's own limits (max n, max logprobs) and herd's defaults."""

from dataclasses import dataclass, field
from typing import Any

from herd.engine.errors import InvalidRequestError
from herd.engine.sampling_params import SamplingParams, StructuredOutputsParams
from herd.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    validate_request,
)
from herd.protocol.structured import Constraint
from herd.server.errors import bad_request

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to the context


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
    include_usage: bool = False  # stream_options.include_usage: a usage chunk at the end
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage in every chunk
    priority: int = 0
    return_token_ids: bool = False
    echo: bool = False  # completions: prompt text before the completion
    max_tokens_default: bool = False  # max_tokens was not given (may be clamped to the context)
    user: str | None = None  # caller's end-user id: logged, never interpreted
    extra: dict[str, Any] = field(default_factory=dict)
    # chat with tools: "auto", "required" or "named" (None: no tools in play); the tools as JSON
    tool_mode: str | None = None
    tools: list[dict] | None = None
    tool_name: str | None = None  # the function a named tool_choice forces


def _limit(value: int | None, name: str, most: int) -> None:
    if value is not None and value > most:
        raise bad_request(f"'{name}' must be at most {most}, got {value}", name)


def structured_params(constraint: Constraint | None) -> StructuredOutputsParams | None:
    """The engine's form of a request's output constraint."""
    if constraint is None:
        return None
    kind, value, param = constraint.kind, constraint.value, constraint.param
    if kind == "choice":
        return StructuredOutputsParams(choice=tuple(value), param=param)
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True, param=param)
    return StructuredOutputsParams(**{kind: value}, param=param)


def to_sampling_params(
    body: CompletionRequest | ChatCompletionRequest,
    max_tokens: int | None,
    logprobs: int | None,
    constraint: Constraint | None = None,
) -> SamplingParams:
    """The engine's settings for `body`: every sampling field, herd's default where absent."""

    def get(name: str, default: Any) -> Any:
        value = getattr(body, name)
        return default if value is None else value

    try:
        return SamplingParams(
            n=get("n", 1),
            max_tokens=max_tokens,
            logprobs=logprobs,
            prompt_logprobs=body.prompt_logprobs,
            stop=body.stop,
            seed=body.seed,
            stop_token_ids=body.stop_token_ids,
            logit_bias=body.logit_bias_ids,
            temperature=get("temperature", 1.0),
            top_p=get("top_p", 1.0),
            top_k=get("top_k", 0),
            min_p=get("min_p", 0.0),
            presence_penalty=get("presence_penalty", 0.0),
            frequency_penalty=get("frequency_penalty", 0.0),
            repetition_penalty=get("repetition_penalty", 1.0),
            min_tokens=get("min_tokens", 0),
            ignore_eos=get("ignore_eos", False),
            include_stop_str_in_output=get("include_stop_str_in_output", False),
            skip_special_tokens=get("skip_special_tokens", True),
            structured_outputs=structured_params(constraint or body.constraint),
        )
    except InvalidRequestError as exc:
        raise bad_request(exc.message, exc.param) from None


def _request(body, chat: bool, params: SamplingParams, max_tokens_default: bool, max_n: int):
    _limit(params.n, "n", max_n)
    options = body.stream_options
    return GenerateRequest(
        chat=chat,
        model=body.model,
        params=params,
        stream=bool(body.stream),
        include_usage=bool(options and options.include_usage),
        # as in vLLM, usage in every chunk needs include_usage too
        continuous_usage=bool(options and options.include_usage and options.continuous_usage_stats),
        priority=body.priority or 0,
        return_token_ids=bool(body.return_token_ids),
        max_tokens_default=max_tokens_default,
        user=body.user or getattr(body, "safety_identifier", None),
    )


def parse_completion(
    body: Any, max_n: int = 64, max_logprobs: int = 20, max_tokens_default: int | None = None
) -> GenerateRequest:
    """A /v1/completions JSON body -> `GenerateRequest`; a 400 naming the parameter otherwise.
    Without max_tokens: `max_tokens_default` (the replica's setting), else OpenAI's 16."""
    f = validate_request(CompletionRequest, body)
    prompts = f.prompt
    if len(prompts) > max_n:
        raise bad_request(f"'prompt' may hold at most {max_n} prompts", "prompt")
    _limit(f.logprobs, "logprobs", max_logprobs)
    _limit(f.prompt_logprobs, "prompt_logprobs", max_logprobs)
    default = f.max_tokens is None
    limit = (max_tokens_default or COMPLETION_MAX_TOKENS) if default else f.max_tokens
    params = to_sampling_params(f, limit, f.logprobs)
    req = _request(f, False, params, default, max_n)
    req.prompt, req.prompts = prompts[0], prompts
    req.echo = bool(f.echo)
    return req


def parse_chat(
    body: Any, max_n: int = 64, max_logprobs: int = 20, max_tokens_default: int | None = None
) -> GenerateRequest:
    """A /v1/chat/completions JSON body -> `GenerateRequest`; a 400 naming the parameter
    otherwise. Without max_tokens: `max_tokens_default`, else up to the context."""
    f = validate_request(ChatCompletionRequest, body)
    _limit(f.top_logprobs, "top_logprobs", max_logprobs)
    _limit(f.prompt_logprobs, "prompt_logprobs", max_logprobs)
    logprobs = (f.top_logprobs or 0) if f.logprobs else None
    max_tokens = f.output_limit
    params = to_sampling_params(f, max_tokens or max_tokens_default, logprobs, f.tool_constraint())
    req = _request(f, True, params, max_tokens is None, max_n)
    req.messages = [m.as_template() for m in f.messages]
    req.tool_mode = f.tool_mode
    if req.tool_mode is not None:
        req.tools = f.tool_dicts()
    if req.tool_mode == "named":
        req.tool_name = f.tool_choice.function.name
    return req
