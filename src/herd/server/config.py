"""`ServerConfig`: every setting of one replica, engine sizing included. Each field's trailing
comment is its `--help` text in `herd replica` (see `field_help`)."""

import inspect
import re
from dataclasses import dataclass, fields


@dataclass
class ServerConfig:
    model: str  # model directory (config.json, safetensors, tokenizer)
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8000  # TCP port to listen on (0: any free port)
    served_model_name: str | None = None  # name in /v1/models (default: the directory's)
    dtype: str = "auto"  # weight and activation dtype: auto, float32, bfloat16, float16
    device: str = "auto"  # torch device: auto, cpu, cuda, cuda:N
    block_size: int = 16  # KV cache block size in tokens
    num_kv_blocks: int | None = None  # KV cache blocks (default: sized from free memory)
    kv_cache_memory: float | None = None  # KV cache bytes (default: 1 GiB on CPU)
    gpu_memory_utilization: float = 0.9  # share of free GPU memory the KV cache may take
    max_num_seqs: int = 128  # most sequences running in one engine step
    max_num_batched_tokens: int = 2048  # token budget of one engine step (chunked prefill)
    max_model_len: int | None = None  # context length (default: the model's)
    enable_prefix_caching: bool = True  # reuse KV blocks of shared prompt prefixes
    seed: int = 0  # engine seed for requests that give none
    drain_timeout: float = 30.0  # seconds SIGTERM waits for in-flight requests before aborting them
    max_queued_requests: int = 1024  # requests admitted but not yet started; more get 429
    max_queued_tokens: int = 1 << 20  # prompt tokens admitted but not yet started; more get 429
    max_request_bytes: int = 8 << 20  # largest request body accepted; larger gets 413
    max_n: int = 64  # largest `n` (completions per request) accepted
    max_logprobs: int = 20  # largest `logprobs` / `top_logprobs` accepted
    warmup: bool = True  # generate one token before /ready turns true
    log_level: str = "info"  # logging level: debug, info, warning, error

    def __post_init__(self) -> None:
        positive = ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_n")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queued_requests", "max_queued_tokens", "max_logprobs", "drain_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")


def field_help(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment in the class source (the one place it is written)."""
    names = {f.name for f in fields(cls)}
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if m and m.group(1) in names:
            helps[m.group(1)] = m.group(2).strip()
    return helps
