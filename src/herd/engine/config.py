"""Engine settings, declared once. Each field of `EngineConfig` (and its nested `SchedulerConfig`)
carries its default, help text and choices; `LLM(**kwargs)` and the `herd replica` / `serve` /
`generate` / `chat` flags are derived from these declarations, so a new setting is written here only.
A bad value is a `ValueError` naming the setting."""

import json
import os
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

from herd.engine.spec_config import SpeculativeConfig, parse_speculative

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8", "int4", "fp8")
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8")
# "auto" + herd.engine.backends.BACKENDS; checked by a test
ATTENTION_BACKENDS = ("auto", "torch", "flex", "cpu", "triton")
KV_SWAP_POLICIES = ("auto", "swap", "recompute")  # herd.engine.swap_policy.MODES
FUSED_ROWS_MAX_BATCH = 32  # the fused step's default limit when it reads plain weight rows


def setting(default: Any = MISSING, help: str = "", choices: tuple | None = None) -> Any:
    """A config field with its help text and allowed values next to its default."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class SchedulerConfig:
    """How much work one engine step may take: the token budget and the number of running
    sequences. Valid on construction."""

    max_num_batched_tokens: int = setting(
        2048, "token budget of one engine step (prefill chunks plus decodes)"
    )
    # 128: what `herd replica` already ran with (the engine said 64), so served behaviour and
    # every recorded replica benchmark stay as they were; the KV pool still bounds the batch.
    max_num_seqs: int = setting(128, "most sequences running in one engine step")
    target_tpot_ms: float | None = setting(
        None,
        "inter-token latency target: cap the sequences decoding together (below max_num_seqs) "
        "so a decode step, measured online, stays under it (default: no cap)",
    )

    def __post_init__(self) -> None:
        check_settings(self)
        _at_least(self, "max_num_batched_tokens", 1)
        _at_least(self, "max_num_seqs", 1)
        if self.target_tpot_ms is not None and self.target_tpot_ms <= 0:
            raise ValueError(f"target_tpot_ms must be > 0, got {self.target_tpot_ms}")


@dataclass
class EngineConfig:
    """Every setting of one engine: model loading, KV cache sizing, scheduling. Constructing one
    validates every field (a `ValueError` naming the setting); the engine trusts it afterwards."""

    model: str = setting(help="a Hugging Face model directory or a .gguf file")
    dtype: str = setting(
        "auto",
        "weight and activation dtype (auto: the checkpoint's; float32 on a CPU without bf16)",
        DTYPES,
    )
    quantization: str | None = setting(
        None, "weight-only quantization of the decoder linears (default: none)", QUANTIZATIONS
    )
    device: str = setting("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda:N")
    block_size: int = setting(16, "tokens per KV cache block")
    kv_cache_dtype: str = setting(
        "auto",
        "KV cache storage dtype (auto: the activation dtype; fp8 halves it)",
        KV_CACHE_DTYPES,
    )
    num_kv_blocks: int | None = setting(
        None, "KV cache size in blocks (default: from kv_cache_memory or gpu_memory_utilization)"
    )
    kv_cache_memory: float | None = setting(
        None, "KV cache size in bytes (default: 1 GiB on CPU; from gpu_memory_utilization on GPU)"
    )
    gpu_memory_utilization: float = setting(
        0.9,
        "share of the GPU's total memory herd may use, weights included, as in vLLM: the KV "
        "cache gets total x utilization - weights - activation reserve",
    )
    max_model_len: int | None = setting(None, "context length (default: the model's)")
    enable_prefix_caching: bool = setting(True, "reuse KV blocks of shared prompt prefixes")
    attention_backend: str = setting(
        "auto",
        "attention implementation (auto: triton on CUDA (flex without Triton), else cpu: C++ paged "
        "decode on CPU)",
        ATTENTION_BACKENDS,
    )
    seed: int = setting(0, "seed of requests that give none")
    # Default from the environment so a test suite (tests/conftest.py) and the replicas it starts
    # skip compiling without naming the setting everywhere.
    enforce_eager: bool = setting(
        os.environ.get("HERD_ENFORCE_EAGER", "") == "1",
        "never torch.compile: every step runs eagerly, as vLLM's enforce_eager "
        "(default: false, or true when HERD_ENFORCE_EAGER=1)",
    )
    compile_max_batch: int = setting(
        1,
        "largest decode batch run through a compiled graph: batches are padded up to a power of "
        "two no larger (a server compiles them all before it is ready, offline engines when "
        "built); larger batches and prefill run eagerly. On CPU buckets up to "
        "fused_decode_max_batch are left to the fused step (by default every batch when the "
        "weights are packed in blocks), so there the default 1 compiles nothing; each bucket "
        "costs ~10-20 s of start-up on 2 cores",
    )
    # The fused C++ decode step on CPUs (engine/cpu_decoder.py): whole decode steps in one
    # native call. Reading weights packed in blocks (bf16 or float32) it beat eager steps
    # at every batch measured up to 128 (bench model, ms: 64 40 vs 41-46, 128 72 vs 98;
    # SmolLM2: 48 46 vs 57-59, 64 58-64 vs 67-69), so by default it takes every decode batch
    # there; from plain weight rows (no AVX2 or AVX-512, or no compiler) it lost past 32
    # (float32 rows at 64: 157 vs 116 ms). benchmarks/RESULTS.md has the runs.
    fused_decode_max_batch: int | None = setting(
        None,
        "CPU only: largest decode batch run as one fused C++ step (all layers in one native call, "
        "no compiling); larger batches go to compiled graphs or eager steps; 0 turns it off "
        "(default: every batch when the weights are packed in blocks (prepack_weights); "
        f"else {FUSED_ROWS_MAX_BATCH})",
    )
    # Packed linear weights on CPU: blocks for herd's kernels (engine/cpu_block_linear.py) where
    # the CPU runs them (bf16 and float32: AVX-512 or AVX2), which replace the plain weights and
    # which the fused step reads too; elsewhere, for bf16, oneDNN's layout (model/packed_linear.py)
    # beside them.
    prepack_weights: bool = setting(
        True,
        "CPU: pack each linear's weight for the matmul kernels: in blocks for herd's kernels "
        "(bf16 and float32, on CPUs with AVX-512 or AVX2), in place of the plain weight (one "
        "copy); elsewhere bf16 weights in oneDNN's layout beside it (matmuls 8-25 percent "
        "faster at 64 rows, twice the linear weights' memory); false keeps the plain weights only",
    )
    # KV cache tiers (issue 15): prefix-cache blocks evicted from the pool go to host memory,
    # then disk, and come back on a later hit instead of being recomputed.
    kv_offload_bytes: float | None = setting(
        None,
        "bytes of host memory for KV blocks evicted from the pool, per tensor-parallel rank "
        "(pinned on a GPU; on a CPU replica the pool is host memory already, so the disk tier "
        "is the one that adds)",
    )
    kv_disk_path: str | None = setting(
        None, "directory of the disk KV tier's memory-mapped file (needs kv_disk_bytes)"
    )
    kv_disk_bytes: float | None = setting(
        None,
        "size of the disk KV tier in bytes, per tensor-parallel rank: blocks pushed out of the "
        "host tier (or the pool)",
    )
    kv_swap_policy: str = setting(
        "auto",
        "restore tier hits or recompute them: auto (whichever is cheaper, measured), swap, "
        "recompute",
        KV_SWAP_POLICIES,
    )
    # CUDA graphs (cuda_graphs.GraphedDecode): on CUDA decode batches are captured, not compiled.
    cuda_graph_max_batch: int = setting(
        256,
        "CUDA only: largest decode batch replayed from a captured CUDA graph (batches padded up "
        "to a power of two no larger; captured at start-up, largest first, seconds in all)",
    )
    # Tensor parallelism (issue 12): one process per rank, herd.engine.distributed.
    tensor_parallel_size: int = setting(
        1,
        "ranks that split the model (attention heads, MLP, vocabulary), one process each, as "
        "in vLLM: NCCL over that many GPUs, gloo on CPU",
    )
    # Speculative decoding (issue 15): vLLM's speculative_config, parsed by engine/spec_config.py.
    speculative_config: dict | None = setting(
        None,
        'speculative decoding, as vLLM\'s: {"method": "ngram" | "draft", '
        '"num_speculative_tokens": k, "model": DRAFT_DIR} (JSON on the command line; default off)',
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.quantization == "none":
            self.quantization = None
        parse_speculative(self.speculative_config)  # a ValueError naming it if bad
        if isinstance(self.speculative_config, str):  # the CLI flag's JSON text
            self.speculative_config = json.loads(self.speculative_config)
        check_settings(self)
        _at_least(self, "block_size", 1)
        _at_least(self, "num_kv_blocks", 1)
        _at_least(self, "kv_cache_memory", 1)
        _at_least(self, "max_model_len", 1)
        _at_least(self, "compile_max_batch", 1)
        _at_least(self, "fused_decode_max_batch", 0)
        self._check_kv_tiers()
        _at_least(self, "cuda_graph_max_batch", 1)
        _at_least(self, "tensor_parallel_size", 1)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )

    @property
    def kv_tiers_enabled(self) -> bool:
        return bool(self.kv_offload_bytes or self.kv_disk_bytes)

    def _check_kv_tiers(self) -> None:
        _at_least(self, "kv_offload_bytes", 0)
        _at_least(self, "kv_disk_bytes", 0)
        if self.kv_disk_bytes and not self.kv_disk_path:
            raise ValueError("kv_disk_bytes needs kv_disk_path (the directory of the tier's file)")
        if self.kv_disk_path and not self.kv_disk_bytes:
            raise ValueError("kv_disk_path needs kv_disk_bytes (the disk tier's size)")
        if self.kv_tiers_enabled and not self.enable_prefix_caching:
            raise ValueError(
                "KV tiers (kv_offload_bytes, kv_disk_bytes) hold prefix-cache blocks by hash: "
                "they need enable_prefix_caching"
            )

    @property
    def speculative(self) -> SpeculativeConfig | None:
        """`speculative_config` parsed (None: speculation off)."""
        return parse_speculative(self.speculative_config)

    @classmethod
    def from_flat(cls, **kwargs: Any) -> "EngineConfig":
        """Build from flat setting names (nested configs' fields at top level), as `LLM` and the
        CLI take them. An unknown name is a `TypeError` naming it."""
        unknown = set(kwargs) - {f.name for f in flat_fields(cls)}
        if unknown:
            raise TypeError(f"unknown engine setting(s): {', '.join(sorted(unknown))}")
        return _build(cls, kwargs)


def flat_fields(cls: type | None = None) -> list[Field]:
    """Every leaf setting of `cls` (default `EngineConfig`), nested config dataclasses flattened,
    in declaration order."""
    out: list[Field] = []
    cls = cls or EngineConfig
    for f in fields(cls):
        nested = f.default_factory if f.default_factory is not MISSING else None
        if nested is not None and is_dataclass(nested):
            out.extend(flat_fields(nested))
        else:
            out.append(f)
    return out


def _build(cls: type, flat: dict[str, Any]) -> Any:
    args = {}
    for f in fields(cls):
        nested = f.default_factory if f.default_factory is not MISSING else None
        if nested is not None and is_dataclass(nested):
            args[f.name] = _build(nested, flat)
        elif f.name in flat:
            args[f.name] = flat[f.name]
    return cls(**args)


def check_settings(config: Any) -> None:
    """Each field with declared choices holds one of them (None allowed where it is the default)."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices and not (value is None and f.default is None):
            raise ValueError(
                f"{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}"
            )


def _at_least(config: Any, name: str, low: float) -> None:
    value = getattr(config, name)
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
