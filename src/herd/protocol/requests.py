"""Request bodies of /v1/completions and /v1/chat/completions as pydantic models: OpenAI's fields
plus the vLLM extensions herd honours. Every field is honoured, accepted and ignored where harmless,
or refused naming it (the table is in docs/protocol.md); `validate_request` turns a JSON body into a
model or an `OpenAIError` 400 that names the parameter. Imports nothing else of herd."""

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from herd.protocol.base import ParamError, Strict, unsupported
from herd.protocol.errors import OpenAIError
from herd.protocol.prompts import Prompt, content_text, parse_prompts
from herd.protocol.structured import ResponseFormat, StructuredFields
from herd.protocol.tools import ToolCall, ToolFields

MAX_STOP = 16  # stop strings per request
LOGIT_BIAS_LIMIT = 100.0  # OpenAI: each bias in [-100, 100]

PROMPT_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        {
            "type": "array",
            "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            "minItems": 1,
        },
    ]
}
STOP_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP},
        {"type": "null"},
    ]
}
TEXT_PART_SCHEMA = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
CONTENT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART_SCHEMA}]}


_unsupported = unsupported


def only(*values: Any) -> Any:
    """A field herd accepts only with these values (documented as an enum in the schema)."""
    return Annotated[Any, WithJsonSchema({"enum": list(values)})]


Unsupported = only(None)  # refused unless absent or null: herd has no such feature


TokenId = Annotated[int, Field(ge=0)]


_Strict = Strict


class StreamOptions(_Strict):
    """`stream_options`: usage at the end (`include_usage`) or in every chunk as well
    (`continuous_usage_stats`, vLLM's extension)."""

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM: usage in every chunk
    include_obfuscation: bool | None = None  # ignored: herd adds no obfuscation padding


class _GenerateRequest(StructuredFields):
    """Fields both endpoints share: sampling, stopping, streaming and vLLM's extensions (the
    structured-output ones from `StructuredFields`)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Annotated[Any, WithJsonSchema(STOP_SCHEMA)] = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        None, json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}}
    )
    seed: int | None = None
    user: str | None = None  # the caller's end user: logged, never interpreted
    # vLLM's extensions
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    prompt_logprobs: int | None = Field(None, ge=0)
    priority: int | None = None  # lower runs first (vLLM's convention)
    return_token_ids: bool | None = None  # token ids in every choice; prompt ids once

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> str | list[str] | None:
        if value is None or (isinstance(value, str) and value):
            return value
        if isinstance(value, list) and all(isinstance(s, str) and s for s in value):
            if len(value) > MAX_STOP:
                raise ParamError(f"'stop' takes at most {MAX_STOP} strings", "stop")
            return value
        raise ParamError("'stop' must be a non-empty string or an array of them", "stop")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise ParamError(
                    f"'logit_bias' keys must be token ids (non-negative integers), got {key!r}",
                    "logit_bias",
                )
            if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
                raise ParamError(
                    f"'logit_bias' values must be in [-100, 100], got {bias} for token {key}",
                    "logit_bias",
                )
        return value

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ParamError(
                "'stream_options' is only allowed when 'stream' is true", "stream_options"
            )
        if self.prompt_logprobs is not None and self.stream:
            raise ParamError(
                "'prompt_logprobs' is not supported with 'stream': true",
                "prompt_logprobs",
                "unsupported_value",
            )
        return self

    @property
    def logit_bias_ids(self) -> dict[int, float] | None:
        """`logit_bias` with integer token ids, or None when empty."""
        return {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None


class CompletionRequest(_GenerateRequest):
    """A /v1/completions body. After validation `prompt` is the list of prompts (one unless
    OpenAI's batch form was sent)."""

    prompt: Annotated[Any, WithJsonSchema(PROMPT_SCHEMA)]
    suffix: only(None, "") = None
    logprobs: int | None = Field(None, ge=0)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> list[Prompt]:
        return parse_prompts(value)

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: Any) -> Any:
        return _unsupported("suffix", value, (None, ""))

    @model_validator(mode="after")
    def _completion_rules(self):
        if self.echo and self.logprobs is not None:
            raise ParamError(
                "'echo' together with 'logprobs' is not supported", "echo", "unsupported_value"
            )
        if self.best_of not in (None, self.n or 1):
            raise ParamError("'best_of' must equal n (herd returns every sample)", "best_of")
        return self


class ChatMessage(_Strict):
    """One chat message. `content` is a string or text parts, read through the prompt grammar; it
    may be absent or null only on an assistant message with `tool_calls`. A `tool` message
    answers a call (`tool_call_id`)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Any, WithJsonSchema({"anyOf": [CONTENT_SCHEMA, {"type": "null"}]})] = None
    name: str | None = None  # accepted; the chat template does not use it
    refusal: str | None = None  # an earlier assistant refusal: ignored
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: Unsupported = None
    audio: Unsupported = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str | None:
        return None if value is None else content_text(value, "content")

    @field_validator("function_call", "audio")
    @classmethod
    def _no_audio(cls, value: Any, info: ValidationInfo) -> Any:
        return _unsupported(info.field_name, value)

    @model_validator(mode="after")
    def _roles(self):
        if self.tool_calls and self.role != "assistant":
            raise ParamError("only assistant messages carry 'tool_calls'", "tool_calls")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ParamError("'content' is required", "content", "missing_required_parameter")
        if self.role == "tool" and not self.tool_call_id:
            raise ParamError(
                "a tool message needs 'tool_call_id'", "tool_call_id", "missing_required_parameter"
            )
        return self

    def as_template(self) -> dict[str, Any]:
        """The message as chat templates take it (tool calls with their arguments as objects)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.as_template() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatCompletionRequest(_GenerateRequest, ToolFields):
    """A /v1/chat/completions body (tool fields from `ToolFields`)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    store: only(None, False) = None
    metadata: dict[str, str] | None = None  # ignored: herd stores nothing
    service_tier: str | None = None  # ignored: one tier
    safety_identifier: str | None = None  # like `user`: logged, never interpreted
    prompt_cache_key: str | None = None  # ignored: herd's prefix cache needs no key
    prompt_cache_retention: str | None = None  # ignored
    prompt_cache_options: dict[str, Any] | None = None  # ignored
    modalities: only(None, ["text"]) = None
    audio: Unsupported = None
    prediction: Unsupported = None
    reasoning_effort: only(None, "none") = None
    verbosity: Unsupported = None
    web_search_options: Unsupported = None
    moderation: Unsupported = None

    @field_validator("store")
    @classmethod
    def _store(cls, value: Any) -> Any:
        return _unsupported("store", value, (None, False))

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: Any) -> Any:
        return _unsupported("modalities", value, (None, ["text"]))

    @field_validator("reasoning_effort")
    @classmethod
    def _reasoning(cls, value: Any) -> Any:
        return _unsupported("reasoning_effort", value, (None, "none"))

    @field_validator("audio", "prediction", "verbosity", "web_search_options", "moderation")
    @classmethod
    def _absent(cls, value: Any, info: ValidationInfo) -> Any:
        return _unsupported(info.field_name, value)

    @model_validator(mode="after")
    def _chat_rules(self):
        a, b = self.max_completion_tokens, self.max_tokens
        if a is not None and b is not None and a != b:
            raise ParamError(
                "'max_completion_tokens' and 'max_tokens' disagree", "max_completion_tokens"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        if self.tool_constraint() is not None and self.constraint is not None:
            raise ParamError(
                f"'tool_choice' {self.tool_mode} constrains the output; it cannot be combined "
                f"with '{self.constraint.param}'",
                "tool_choice",
            )
        return self

    @property
    def output_limit(self) -> int | None:
        """max_completion_tokens (OpenAI's current name) or max_tokens (its deprecated one)."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


# ---- a JSON body -> a model, or a 400 naming the parameter ----------------------------------

T = TypeVar("T", bound=_GenerateRequest)

# pydantic error type -> OpenAI error code; the codes are the `reason` label of the rejected-
# request metric, so this set stays small.
_CODES = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter"}


def loc_param(loc: tuple) -> str | None:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _first_error(exc: ValidationError) -> OpenAIError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    param = loc_param(loc)
    if isinstance(cause, ParamError | ValueError) and getattr(cause, "param", None):
        # A validator's param is relative to the field it ran on (its last loc element).
        inner = cause.param
        head = loc_param(loc[:-1]) if loc and str(inner).startswith(str(loc[-1])) else param
        param = f"{head}.{inner}" if head else inner
        message = cause.message.replace(f"'{inner}'", f"'{param}'", 1)
        code = getattr(cause, "code", "invalid_value")
    elif err["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: '{param}'"
        code = _CODES["extra_forbidden"]
    elif err["type"] == "missing":
        message = f"'{param}' is required"
        code = _CODES["missing"]
    else:
        message = f"'{param}': {err['msg']}" if param else err["msg"]
        code = "invalid_type" if err["type"].endswith("_type") else "invalid_value"
    return OpenAIError(400, message, param=param, code=code)


def _number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an int when it is integral (JSON Schema's
    `integer` includes 3.0, so a token id or max_tokens may arrive that way)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> Any:
    """A request body as JSON (strict: no NaN or Infinity; integral numbers as ints), or an
    `OpenAIError` 400 saying where it breaks."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OpenAIError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_float=_number, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError included
        raise OpenAIError(
            400, f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None


def validate_request(cls: type[T], body: Any) -> T:
    """`body` (parsed JSON) as `cls`, or an `OpenAIError` 400 naming the first bad parameter."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_type")
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
