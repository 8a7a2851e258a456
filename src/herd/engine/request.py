"""`Request`: one sequence being generated, and its ordered status."""

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from herd.engine.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    """Ordered: everything after PREEMPTED is finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self)


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class TokenCounts:
    """Counts derived from `all_token_ids` (prompt + output) and `num_prompt_tokens`, for a
    request and for the views of one the sampler takes (speculative draft positions)."""

    all_token_ids: list[int]
    num_prompt_tokens: int

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens


@dataclass(eq=False)
class Request(TokenCounts):
    """One sequence: `n` > 1 completions are sibling Requests of one parent id.

    `all_token_ids` is prompt + output; `num_computed_tokens` of them have KV in the cache.
    """

    request_id: str  # unique per sequence ("<parent>" or "<parent>#<index>")
    parent_id: str
    index: int  # which of the parent's n completions
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int | None  # this sibling's seed (derived from the parent's)
    max_tokens: int  # resolved against the context length
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prompt tokens hit in the prefix cache (first schedule)
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    grammar: Any = None  # structured outputs: this sequence's matcher (herd.engine.structured)
    spec_token_ids: list[int] = field(default_factory=list)  # drafts proposed for the next step

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def sort_key(self) -> tuple[int, float, str]:
        """Lower is served first: priority, then arrival (preempted requests keep their place)."""
        return (self.priority, self.arrival_time, self.request_id)
