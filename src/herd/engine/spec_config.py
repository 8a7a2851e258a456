"""`SpeculativeConfig`: the `speculative_config` setting (vLLM's shape) parsed and checked once,
torch-free, so `EngineConfig` refuses a bad one on construction (a `ValueError` naming it)."""

import json
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "draft")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding settings: `method` ngram (prompt lookup) or draft (a small model with
    the target's tokenizer, `model` its directory), at most `num_speculative_tokens` proposed per
    sequence and step. With `adaptive` (default) the engine shrinks k, down to off, whenever its
    measured step costs say speculation would cost more than it saves."""

    method: str
    num_speculative_tokens: int = 4
    model: str | None = None  # draft: the draft model's directory (or .gguf)
    prompt_lookup_max: int = 4  # ngram: longest suffix n-gram tried
    prompt_lookup_min: int = 1  # ngram: shortest suffix n-gram tried
    adaptive: bool = True  # shrink k / switch off when speculation costs more than it saves

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative_config method must be one of {METHODS}, got {self.method!r}"
            )
        if not isinstance(self.num_speculative_tokens, int) or self.num_speculative_tokens < 1:
            raise ValueError("speculative_config num_speculative_tokens must be an integer >= 1")
        if self.method == "draft" and not self.model:
            raise ValueError("speculative_config method 'draft' needs 'model' (a model directory)")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("speculative_config needs 1 <= prompt_lookup_min <= prompt_lookup_max")


def parse_speculative(value: dict | str | None) -> SpeculativeConfig | None:
    """A dict (or its JSON text, as the CLI flag gives it) -> `SpeculativeConfig`; None stays
    None. An unknown key or a bad value is a `ValueError` naming it."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"speculative_config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"speculative_config must be a JSON object, got {value!r}")
    known = {f.name for f in fields(SpeculativeConfig)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"speculative_config has unknown key(s): {', '.join(sorted(unknown))}")
    if "method" not in value:
        raise ValueError(f"speculative_config needs 'method' ({' or '.join(METHODS)})")
    args: dict[str, Any] = dict(value)
    return SpeculativeConfig(**args)
