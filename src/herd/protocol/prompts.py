"""The prompt grammar of OpenAI's API, parsed in one place for server and gateway: a completion
prompt is text, token ids, or a batch of either; a chat message's content is a string or a list of
text parts. Bad input raises `PromptError` naming the parameter. Imports nothing else of herd."""

from typing import Any

Prompt = str | list[int]  # one prompt: text or token ids


class PromptError(ValueError):
    """A prompt or message content that breaks the grammar; `param` names where (e.g. `prompt`,
    `messages[2].content`). Inside a pydantic validator it becomes a validation error that keeps
    the param; elsewhere callers turn it into a 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def is_token_id(value: Any) -> bool:
    """A JSON integer (not a boolean) >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _token_ids(value: list, param: str) -> list[int]:
    if not value or not all(is_token_id(t) for t in value):
        raise PromptError(
            f"'{param}' token ids must be a non-empty array of non-negative integers", param
        )
    return value


def parse_prompts(value: Any, param: str = "prompt", max_batch: int | None = None) -> list[Prompt]:
    """A completion prompt as a list of prompts (one unless a batch): a string, an array of token
    ids, an array of strings, or an array of token-id arrays. Empty strings are text; empty
    token-id arrays, empty batches and batches mixing texts with token ids are refused."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise PromptError(
            f"'{param}' must be a string, an array of token ids, or a non-empty array of either",
            param,
        )
    if not isinstance(value[0], str | list):  # one prompt of token ids
        return [_token_ids(value, param)]
    if max_batch is not None and len(value) > max_batch:
        raise PromptError(f"'{param}' may hold at most {max_batch} prompts", param)
    # A batch holds texts or token-id arrays, not both (as OpenAI's schema says).
    kind = str if isinstance(value[0], str) else list
    prompts: list[Prompt] = []
    for i, item in enumerate(value):
        if not isinstance(item, kind):
            what = "a string" if kind is str else "an array of token ids"
            raise PromptError(
                f"'{param}[{i}]' must be {what}, like the batch's first prompt", f"{param}[{i}]"
            )
        prompts.append(item if kind is str else _token_ids(item, f"{param}[{i}]"))
    return prompts


def prompt_key(prompt: Prompt) -> str:
    """A prompt as text for keys and estimates: the text itself, or token ids joined by spaces."""
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def content_text(content: Any, param: str) -> str:
    """A chat message's `content`: a string, or text parts (`{"type": "text", "text": ...}`)
    joined. Other part types (images, audio, files) are refused naming the part."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise PromptError(f"'{param}' must be a string or an array of text parts", param)
    texts = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise PromptError(
                f"'{where}' has type {kind!r}: only text parts are supported "
                "({'type': 'text', 'text': ...}; no images, audio or files)",
                where,
            )
        unknown = sorted(set(part) - {"type", "text", "prompt_cache_breakpoint"})
        if unknown:
            raise PromptError(f"'{where}' has unknown key '{unknown[0]}'", f"{where}.{unknown[0]}")
        if not isinstance(part.get("text"), str):
            raise PromptError(f"'{where}.text' must be a string", f"{where}.text")
        texts.append(part["text"])
    return "".join(texts)
