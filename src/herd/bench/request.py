"""What one benchmark request asks for (input) and what the client observed (output).

Inputs are plain data built by the workload module; outputs carry raw timestamps only, so all
arithmetic (TTFT, ITL, TPOT, goodput) lives in metrics.py and can be tested on synthetic data."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestInput:
    """One turn to send: the prompt text, the input length the workload aimed for and the
    `max_tokens` to ask for. Immutable, so the same dataset gives the same requests."""

    prompt: str  # this turn's user text (chat) or the whole prompt (completions)
    input_tokens: int  # prompt length the workload aimed for (target tokenizer or approximation)
    output_tokens: int  # max_tokens to ask for


@dataclass(frozen=True)
class Conversation:
    """One user's work: a single request, or the turns of a chat whose history grows each turn."""

    conv_id: str
    turns: tuple[RequestInput, ...]


@dataclass
class RequestOutput:
    """What was observed for one request, as raw timestamps (`perf_counter`) and counts: start,
    end, every content chunk's arrival and size, the server's usage if sent, and an error class
    on failure. Arithmetic on it lives in `metrics`."""

    start: float  # perf_counter when the request was sent
    end: float = 0.0  # when the stream ended (or failed)
    ok: bool = False
    error: str = ""  # failure reason class: http_429, timeout, connection, stream_error, ...
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk with content
    chunk_chars: list[int] = field(default_factory=list)  # characters in that chunk
    text: str = ""
    requested_output_tokens: int = 0
    expected_input_tokens: int = 0
    prompt_tokens: int | None = None  # from the server's usage, when it sends one
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    client_overhead_s: float = 0.0  # time spent in our own parsing and bookkeeping
    scheduled: float | None = None  # open loop: when the arrival process wanted it sent

    @property
    def ttft(self) -> float | None:
        """Time to the first chunk that carries content (role-only chunks do not count)."""
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start
