"""Configuration of a benchmark run: target, load levels, workload, SLO and cost.

One dataclass per concern, validated on construction, so the CLI, tests and library users
build the same objects and get the same error messages."""

import re
from dataclasses import asdict, dataclass, field


class BenchConfigError(ValueError):
    """A setting that cannot work; the CLI prints it as a one-line error."""


@dataclass(frozen=True)
class Target:
    """The endpoint under test: URL, model, API key, chat or completions, streaming. Validated on
    construction; `url` and `scrape_url` are derived from `base_url` so every request of a run
    goes to the same place."""

    base_url: str  # OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1
    model: str = ""  # empty: the first id /models lists
    api_key: str = ""
    endpoint: str = "chat"  # chat: /chat/completions; completions: /completions
    stream: bool = True
    timeout_s: float = 600.0  # per request
    ignore_eos: bool = False  # vLLM/SGLang extension; other servers may refuse it
    metrics_url: str = ""  # Prometheus /metrics; empty: <base_url without /v1>/metrics
    temperature: float = 0.0

    def __post_init__(self):
        if not re.match(r"^https?://", self.base_url):
            raise BenchConfigError(
                f"--base-url must start with http:// or https://, got {self.base_url!r}"
            )
        if self.endpoint not in ("chat", "completions"):
            raise BenchConfigError("--endpoint must be chat or completions")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    @property
    def scrape_url(self) -> str:
        return self.metrics_url or re.sub(r"/v1$", "", self.base_url) + "/metrics"


@dataclass(frozen=True)
class Load:
    """One load level: `concurrency` users in a closed loop, or open-loop arrivals at `rate`/s."""

    kind: str  # "concurrency" or "rate"
    value: float
    burstiness: float = 1.0
    max_concurrency: int = 0  # open loop: cap on requests in flight (0: none)

    @property
    def label(self) -> str:
        return f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class Limits:
    """How much to send at each load level: a request count or a duration (exactly one), warm-up
    requests left out of results, and repeats for confidence intervals."""

    num_requests: int = 0  # requests per level (0: use duration)
    duration_s: float = 0.0  # seconds of sending per level (0: use num_requests)
    warmup: int = 0  # requests sent before the first level and left out of results
    repeats: int = 1  # runs of each level, for confidence intervals in compare

    def __post_init__(self):
        if self.num_requests <= 0 and self.duration_s <= 0:
            raise BenchConfigError("give --num-requests or --duration (a positive number)")
        if self.repeats < 1 or self.warmup < 0:
            raise BenchConfigError("--repeats must be >= 1 and --warmup >= 0")


@dataclass(frozen=True)
class Slo:
    """Latency objectives per request (TTFT, TPOT, p99 ITL, E2E, in milliseconds); a request meets
    the SLO when it meets every objective that is set. `parse` reads `ttft=500ms,tpot=50ms`."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: float | None = None  # applies to each request's p99 inter-token latency
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Slo":
        """`ttft=500ms,tpot=50ms,e2e=10s`; bare numbers are milliseconds."""
        if not text:
            return cls()
        values = {}
        for part in text.split(","):
            m = re.fullmatch(r"\s*(ttft|tpot|itl|e2e)\s*=\s*([0-9.]+)\s*(ms|s)?\s*", part)
            if not m:
                raise BenchConfigError(
                    f"bad --slo part {part!r}: use ttft=500ms,tpot=50ms,itl=..,e2e=.."
                )
            scale = 1000.0 if m.group(3) == "s" else 1.0
            values[f"{m.group(1)}_ms"] = float(m.group(2)) * scale
        return cls(**values)

    @property
    def active(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Workload:
    """What the prompts look like: kind (synthetic, shared-prefix, multi-turn, jsonl), lengths and
    their spread, the seed that makes a dataset reproducible, and whether prompts are made
    unique so a warm prefix cache cannot inflate results."""

    kind: str = "synthetic"  # synthetic | shared-prefix | multi-turn | jsonl
    input_len: int = 128
    output_len: int = 128
    length_dist: str = "fixed"  # fixed | uniform | normal
    length_spread: float = 0.25  # uniform: +-spread*len; normal: std = spread*len
    num_groups: int = 4  # shared-prefix: groups sharing a prefix
    prefix_len: int = 512  # shared-prefix: tokens in each group's prefix
    turns: int = 4  # multi-turn: user turns per conversation
    dataset: str = ""  # jsonl: path to prompts
    seed: int = 0
    unique: bool = True  # salt prompts per run so a warm prefix cache cannot inflate results
    tokenizer: str = ""  # HF tokenizer name/path; empty: try the model name, else approximate

    def __post_init__(self):
        kinds = ("synthetic", "shared-prefix", "multi-turn", "jsonl")
        if self.kind not in kinds:
            raise BenchConfigError(f"--workload must be one of {', '.join(kinds)}")
        if self.length_dist not in ("fixed", "uniform", "normal"):
            raise BenchConfigError("--length-dist must be fixed, uniform or normal")
        if self.input_len < 1 or self.output_len < 1:
            raise BenchConfigError("--input-len and --output-len must be >= 1")
        if self.kind == "jsonl" and not self.dataset:
            raise BenchConfigError("--workload jsonl needs --dataset FILE")


@dataclass(frozen=True)
class Cost:
    """What the endpoint costs to run: GPUs behind it and the price of a GPU-hour, so results can
    report dollars per million tokens."""

    gpus: int = 1  # GPUs behind the endpoint
    gpu_hour_cost: float | None = None  # $ per GPU-hour


@dataclass(frozen=True)
class Sweep:
    """--sweep: double the load until throughput stops growing or SLO/error limits break."""

    enabled: bool = False
    kind: str = "concurrency"  # or "rate"
    start: float = 1.0
    max_value: float = 1024.0
    min_gain: float = 0.10  # a level adding less than 10% throughput means saturation
    max_error_rate: float = 0.05


@dataclass(frozen=True)
class BenchConfig:
    """A whole benchmark run: target, limits, workload, load levels (or a sweep), SLO and cost.
    Validated on construction, so the runner never meets an inconsistent combination."""

    target: Target
    limits: Limits
    workload: Workload = field(default_factory=Workload)
    loads: tuple[Load, ...] = ()
    sweep: Sweep = field(default_factory=Sweep)
    slo: Slo = field(default_factory=Slo)
    cost: Cost = field(default_factory=Cost)
    label: str = ""
    progress: bool = True

    def __post_init__(self):
        if not self.loads and not self.sweep.enabled:
            raise BenchConfigError("give --concurrency, --rate or --sweep")
