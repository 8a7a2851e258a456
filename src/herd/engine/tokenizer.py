"""`Tokenizer`: the model's Hugging Face tokenizer (from its directory, or rebuilt from a GGUF
file's metadata by `herd.model.gguf_tokenizer`), its chat template, and
`IncrementalDetokenizer`, which turns a growing token list into text deltas without splitting
a multi-byte character across deltas."""

from pathlib import Path
from typing import Any

from herd.engine.errors import InvalidRequestError, ModelLoadError


class Tokenizer:
    """The model's tokenizer and chat template (from tokenizer.json / tokenizer_config.json, or
    rebuilt from a GGUF file's metadata): encode, decode and `apply_chat_template` with a
    generation prompt, the same for offline use and the server."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        from herd.model.gguf_file import find_gguf

        try:
            gguf = find_gguf(model_dir)
            if gguf is not None:
                from herd.model.gguf_tokenizer import load_gguf_tokenizer

                self.hf = load_gguf_tokenizer(gguf)
            else:
                self.hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises many types for a broken directory
            raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
        self.vocab_size = len(self.hf)
        self.all_special_ids = set(self.hf.all_special_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        """Token ids of the rendered conversation, as transformers renders it."""
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template", param="messages")
        try:
            ids = self.hf.apply_chat_template(
                messages,
                tokenize=True,
                add_generation_prompt=add_generation_prompt,
                return_dict=False,
                **kwargs,
            )
        except Exception as exc:  # jinja errors: a malformed conversation
            raise InvalidRequestError(f"cannot apply the chat template: {exc}", "messages") from exc
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)


class IncrementalDetokenizer:
    """Decodes a window of recent tokens twice (with and without the new ones) and emits the
    difference, holding it back while it ends in an incomplete UTF-8 sequence (U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_ids: list[int], final: bool = False) -> str:
        self.ids.extend(token_ids)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], self.skip)
        text = decode(self.ids[self.prefix_offset :], self.skip)
        if len(text) > len(prefix) and (final or not text.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""
