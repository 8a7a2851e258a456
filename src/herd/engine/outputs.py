"""What the engine hands back: per-step deltas from `LLMEngine.step()`, and the whole results
that `LLM.generate` assembles from them."""

from dataclasses import dataclass, field


class Logprob(float):
    """A logprob that is a float, and also reads like vLLM's `Logprob` (`.logprob`, `.rank`), so
    code written against either keeps working."""

    rank: int | None

    def __new__(cls, value: float, rank: int | None = None) -> "Logprob":
        obj = super().__new__(cls, value)
        obj.rank = rank  # 1 = the most likely token
        return obj

    @property
    def logprob(self) -> float:
        return float(self)


# One position's logprobs: token id -> logprob (the sampled token plus the top-k).
TokenLogprobs = dict[int, float]


@dataclass
class CompletionOutput:
    """One completion (of `n`). In a step delta, `token_ids`, `text` and `logprobs` hold only what
    this step added; in `LLM.generate` results they hold everything."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Timestamps (time.monotonic()) for one request, for the server's and benchmarks' latencies."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def queue_time(self) -> float | None:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time


@dataclass
class RequestOutput:
    """Progress of one request (all its `n` completions)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    metrics: RequestMetrics | None = None
