"""`SamplingParams`: how one request is sampled and when it stops (vLLM's names and meanings)."""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from herd.engine.errors import InvalidRequestError


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on the output (vLLM's names): exactly one of a JSON schema, any JSON object,
    a regular expression, a choice of strings, or an EBNF grammar. `param` is the request field
    it came from, so a constraint the grammar library refuses is a 400 naming that field."""

    json: Any = None  # a JSON schema (dict or its text)
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None  # EBNF (xgrammar's / llama.cpp's GBNF dialect)
    param: str = "structured_outputs"

    def validate(self) -> None:
        kinds = [self.json is not None, self.json_object, self.regex is not None]
        kinds += [self.choice is not None, self.grammar is not None]
        if sum(kinds) != 1:
            raise InvalidRequestError(
                f"{self.param} must hold exactly one of json, json_object, regex, choice, grammar",
                param=self.param,
            )
        if self.choice is not None and not self.choice:
            raise InvalidRequestError(f"{self.param} choice must not be empty", param=self.param)


@dataclass
class SamplingParams:
    """Per-request sampling and stopping settings.

    Logit transforms apply in this order: logit_bias, repetition / presence / frequency
    penalties, min_tokens (suppress stop tokens), temperature, top-k, top-p, min-p; then a draw (or argmax when
    temperature is 0). `seed` makes the draw depend only on (seed, output position).
    """

    n: int = 1  # number of completions; siblings share the prompt's KV blocks
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus mass, in (0, 1]
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0  # drop tokens below min_p * p(max), in [0, 1]
    seed: int | None = None  # per-request RNG seed
    presence_penalty: float = 0.0  # OpenAI semantics, in [-2, 2]
    frequency_penalty: float = 0.0  # OpenAI semantics, in [-2, 2]
    repetition_penalty: float = 1.0  # HF/CTRL semantics, > 0 (1 = off)
    stop: list[str] | str | None = None  # stop strings; not included in the output text
    stop_token_ids: list[int] | None = None  # extra token ids that end the sequence
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False  # keep going past EOS (benchmarks)
    max_tokens: int | None = 16  # None: up to the model's context
    min_tokens: int = 0  # EOS / stop tokens are suppressed before this many tokens
    logprobs: int | None = None  # top-k logprobs per generated token (plus the sampled one)
    prompt_logprobs: int | None = None  # top-k logprobs per prompt token
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit, in [-100, 100]
    # output constrained to a grammar (herd.engine.structured): masked before sampling
    structured_outputs: StructuredOutputsParams | None = None
    stop_list: list[str] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self.stop_list = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.validate()

    def validate(self) -> None:
        def bad(param: str, why: str) -> InvalidRequestError:
            return InvalidRequestError(f"{param} {why}", param=param)

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", f"must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise bad("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise bad("top_k", f"must be -1 or 0 (off) or a positive integer, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if not -2 <= self.presence_penalty <= 2:
            raise bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not -2 <= self.frequency_penalty <= 2:
            raise bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise bad("min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"({self.min_tokens}) must not exceed max_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise bad(name, f"must be >= 0, got {value}")
        if any(not isinstance(s, str) or not s for s in self.stop_list):
            raise bad("stop", "must be non-empty strings")
        for token, bias in (self.logit_bias or {}).items():
            if not isinstance(token, int) or token < 0:
                raise bad("logit_bias", f"keys must be token ids >= 0, got {token!r}")
            if not -100 <= bias <= 100:
                raise bad("logit_bias", f"values must be in [-100, 100], got {bias} for {token}")
        if self.structured_outputs is not None:
            self.structured_outputs.validate()
            if self.min_tokens:  # min_tokens masks the stop token a finished grammar needs
                raise bad("min_tokens", "cannot be combined with structured outputs")

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse token ids the model does not have (they would index past the logits)."""
        for name in ("logit_bias", "stop_token_ids"):
            bad = next((t for t in getattr(self, name) or () if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise InvalidRequestError(
                    f"{name} has token id {bad}, outside the vocabulary (0..{vocab_size - 1})",
                    param=name,
                )

    @cached_property
    def logit_bias_lists(self) -> tuple[list[int], list[float]]:
        """`logit_bias` as (token ids, biases), built once per request, not once per step."""
        items = (self.logit_bias or {}).items()
        return [t for t, _ in items], [float(b) for _, b in items]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
