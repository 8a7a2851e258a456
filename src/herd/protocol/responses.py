"""Response bodies as pydantic models: completions and chat completions (whole and streamed
chunks), usage, logprobs, the model list and the error body. They describe what the server sends
(the OpenAPI schema is built from them); the per-token path renders plain dicts of the same shape,
so validating every chunk costs nothing at serving time. Imports nothing else of herd."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    """Responses may grow fields (clients ignore what they do not know), so extras are allowed."""

    model_config = ConfigDict(extra="allow")


class PromptTokensDetails(_Out):
    """Usage detail: how many prompt tokens came from the prefix cache."""

    cached_tokens: int = Field(ge=0)  # prompt tokens served from the prefix cache


class Usage(_Out):
    """Token counts of a request (all its choices; all prompts of a batch)."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(_Out):
    """One alternative token and its logprob (chat logprobs format)."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """A generated token's logprob with the top alternatives at that position (chat logprobs
    format)."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Out):
    """The logprobs of a chat choice, one entry per generated token."""

    content: list[TokenLogprob] | None = None


class CompletionLogprobs(_Out):
    """The legacy completions format: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(_Out):
    """vLLM's prompt logprob entry (keyed by token id in `prompt_logprobs`)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


FinishReason = Literal["stop", "length", "abort", "error"] | None
PromptLogprobs = list[dict[str, PromptLogprob] | None] | None


class CompletionChoice(_Out):
    """One choice of a /v1/completions answer: its text, finish reason and, when asked, logprobs,
    token ids and prompt logprobs (vLLM extensions)."""

    index: int = Field(ge=0)
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason = None
    stop_reason: int | str | None = None  # vLLM: the stop token id or string that matched
    token_ids: list[int] | None = None  # return_token_ids
    prompt_token_ids: list[int] | None = None  # return_token_ids in a batch
    prompt_logprobs: PromptLogprobs = None


class CompletionResponse(_Out):
    """A /v1/completions answer; streamed chunks have the same shape (usage null until the end,
    or in every chunk with continuous_usage_stats)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None


class ChatMessageOut(_Out):
    """The assistant message of a chat choice."""

    role: Literal["assistant"]
    content: str | None = None


class ChatChoice(_Out):
    """One choice of a /v1/chat/completions answer: the message, finish reason and, when asked,
    logprobs and token ids."""

    index: int = Field(ge=0)
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: PromptLogprobs = None


class ChatCompletionResponse(_Out):
    """A whole (non-streamed) /v1/chat/completions answer with usage."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None


class ChatDelta(_Out):
    """What one streamed chat chunk adds to a choice: the role on the first chunk, then content."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Out):
    """One choice's delta within a streamed chat chunk; `finish_reason` is set on its last one."""

    index: int = Field(ge=0)
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(_Out):
    """One SSE event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None


class ModelCard(_Out):
    """One served model in /v1/models, with herd's context length and precision metadata (dtype,
    quantization, KV cache dtype)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None = None
    max_model_len: int | None = None
    # herd's precision metadata: dtype, quantization (none/int8/int4/fp8), kv_cache_dtype
    dtype: str | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None


class ModelList(_Out):
    """The /v1/models answer."""

    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(_Out):
    """The inside of OpenAI's error body: message, type, and the param and code when known."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Out):
    """OpenAI's error body (`herd.protocol.errors` renders it)."""

    error: ErrorDetail


class Status(_Out):
    """/health and /ready: {"status": "ok" | "ready" | "starting" | "draining"}; a ready replica
    also says how long each start-up phase took (seconds by phase), for cold-start accounting."""

    status: str
    startup: dict[str, float] | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the JSON-ready dict the server sends."""
    return model.model_dump(mode="json")
