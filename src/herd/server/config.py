"""`ServerConfig`: the settings of one replica. The engine's settings are an `EngineConfig`
(declared once in herd.engine.config); only what the HTTP server itself needs is declared here,
with `setting()` so that `herd replica` derives its flags from both."""

from dataclasses import dataclass

from herd.engine.config import EngineConfig, check_settings, setting
from herd.server.tool_parsers import PARSERS


@dataclass
class ServerConfig:
    """What one replica runs (`engine`) and how it serves it: address, admission limits, drain.
    Valid on construction (a `ValueError` naming the setting)."""

    engine: EngineConfig
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8000, "TCP port to listen on (0: any free port)")
    served_model_name: str | None = setting(
        None, "name in /v1/models (default: the model's file or directory name)"
    )
    drain_timeout: float = setting(
        30.0, "seconds SIGTERM waits for in-flight requests before aborting them"
    )
    max_queued_requests: int = setting(1024, "requests admitted but not yet started; more get 429")
    max_queued_tokens: int = setting(
        1 << 20, "prompt tokens admitted but not yet started; more get 429"
    )
    max_request_bytes: int = setting(8 << 20, "largest request body accepted; larger gets 413")
    max_n: int = setting(64, "largest `n` (completions per request) accepted")
    max_logprobs: int = setting(20, "largest `logprobs` / `top_logprobs` accepted")
    max_tokens_default: int | None = setting(
        None,
        "max_tokens of a request that gives none (default: 16 for completions, as OpenAI; chat "
        "runs to the context)",
    )
    tool_call_parser: str = setting(
        "llama3_json", "how tool calls are read from the model's output", tuple(PARSERS)
    )
    warmup: bool = setting(True, "generate one token before /ready turns true")
    log_level: str = setting("info", "logging level", ("debug", "info", "warning", "error"))
    tls_cert: str | None = setting(None, "PEM certificate chain: serve HTTPS")
    tls_key: str | None = setting(None, "the certificate's private key (PEM)")
    tls_client_ca: str | None = setting(
        None, "require client certificates signed by this CA (mutual TLS)"
    )
    fleet_token_file: str | None = setting(
        None,
        "file holding the fleet's internal token; every route but /health and /ready then "
        "requires it (default: $HERD_FLEET_TOKEN if set)",
    )
    # Batch API (/v1/files, /v1/batches)
    batch_dir: str | None = setting(
        None, "Batch API: keep files and batch state (SQLite) here; unset: the Batch API is off"
    )
    batch_concurrency: int = setting(
        8, "Batch API: lines in flight at once, at the lowest priority (idle capacity only)"
    )
    max_batch_file_bytes: int = setting(200 << 20, "Batch API: largest file upload accepted")
    head_timeout: float = setting(10.0, "seconds a client may take to send a request head")
    body_timeout: float = setting(30.0, "seconds a client may take to send a request body")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.max_tokens_default is not None and self.max_tokens_default < 1:
            raise ValueError(f"max_tokens_default must be >= 1, got {self.max_tokens_default}")
        if self.max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {self.max_n}")
        if self.head_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("head_timeout and body_timeout must be > 0")
        if self.batch_concurrency < 1:
            raise ValueError(f"batch_concurrency must be >= 1, got {self.batch_concurrency}")
        for name in ("max_queued_requests", "max_queued_tokens", "max_logprobs", "drain_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")

    @property
    def model(self) -> str:
        return self.engine.model
