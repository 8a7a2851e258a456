"""Engine configuration: one plain dataclass per concern, validated on construction."""

from dataclasses import dataclass, field

from herd.engine.errors import InvalidRequestError

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 2048  # token budget of one step (prefill chunks + decodes)
    max_num_seqs: int = 64  # most requests running at once

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise InvalidRequestError("max_num_batched_tokens must be >= 1")
        if self.max_num_seqs < 1:
            raise InvalidRequestError("max_num_seqs must be >= 1")


@dataclass
class EngineConfig:
    model: str  # local Hugging Face model directory
    dtype: str = "auto"  # auto (the checkpoint's), float32, bfloat16, float16
    device: str = "cpu"  # cpu, cuda, cuda:N
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # explicit KV pool size; None: from kv_cache_memory
    kv_cache_memory: float | None = None  # KV pool bytes; None: 1 GiB on CPU, a share on GPU
    gpu_memory_utilization: float = 0.9  # share of free GPU memory (after weights) for the KV pool
    max_model_len: int | None = None  # context length; None: the model's
    enable_prefix_caching: bool = True
    attention_backend: str = "torch"  # see herd.engine.attention.BACKENDS
    seed: int = 0  # seeds unseeded sampling
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidRequestError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.block_size < 1:
            raise InvalidRequestError(f"block_size must be >= 1, got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise InvalidRequestError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise InvalidRequestError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
