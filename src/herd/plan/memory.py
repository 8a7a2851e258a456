"""Memory arithmetic for one replica: weights per GPU by precision and tensor parallelism,
KV-cache bytes per token, KV tokens that fit, and the most concurrent sequences.

Conventions follow vLLM: under fp8/int8/int4 only the decoder's linear layers are quantized;
embeddings, lm_head and norms stay in the checkpoint dtype. Tensor parallelism splits heads,
the MLP and the (vocab-parallel) embeddings; norms are replicated, and when tp exceeds the KV
head count each GPU keeps one replicated KV head."""

import math
from dataclasses import asdict, dataclass

from herd.plan.gpus import GIB, GpuSpec
from herd.plan.model_config import ModelConfig

QUANTIZABLE = ("attn_qo", "attn_kv", "mlp")


@dataclass(frozen=True)
class Precision:
    """A weight precision by herd's names (bf16, fp8, int8, int4): bits per weight and, for grouped
    formats, the group size whose scale and zero add to the bytes."""

    name: str
    bits: int  # bits per quantized weight
    # >0: a 16-bit scale and zero per group (int4); 0: per-channel/tensor scales (negligible)
    group_size: int = 0

    @property
    def bytes_per_param(self) -> float:
        scale = 4 / self.group_size if self.group_size else 0.0
        return self.bits / 8 + scale


PRECISIONS = {
    "bf16": Precision("bf16", 16),
    "fp16": Precision("fp16", 16),
    "fp8": Precision("fp8", 8),
    "int8": Precision("int8", 8),
    "int4": Precision("int4", 4, group_size=32),  # herd's int4 (herd.model.quant): 5 bits a weight
}
KV_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "auto": 2, "fp8": 1}


def resolve_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}"
        ) from None


def kv_dtype_bytes(name: str) -> int:
    try:
        return KV_DTYPE_BYTES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown KV-cache dtype {name!r}: use bf16, fp16 or fp8") from None


def check_tp(model: ModelConfig, tp: int) -> None:
    model.check_tensor_parallel(tp)  # the engine's own rule: one place


def kv_heads_per_gpu(model: ModelConfig, tp: int) -> int:
    # Fewer KV heads than GPUs: each GPU keeps a replica of one head (as the engine does).
    return model.kv_heads_per_rank(tp)


def weight_bytes_per_gpu(model: ModelConfig, tp: int, precision: Precision) -> float:
    counts = model.param_counts()
    kv_share = kv_heads_per_gpu(model, tp) / model.num_key_value_heads
    per_gpu = {
        "attn_qo": counts["attn_qo"] / tp,
        "attn_kv": counts["attn_kv"] * kv_share,
        "mlp": counts["mlp"] / tp,
        "embed": math.ceil(model.vocab_size / tp) * model.hidden_size,
        "lm_head": math.ceil(model.vocab_size / tp) * model.hidden_size if counts["lm_head"] else 0,
        "norm": counts["norm"],
    }
    base = 4 if model.torch_dtype in ("float32", "fp32") else 2
    return sum(
        n * (precision.bytes_per_param if k in QUANTIZABLE else base) for k, n in per_gpu.items()
    )


def kv_bytes_per_token(model: ModelConfig, kv_bytes: int, tp: int = 1) -> int:
    """K and V, every layer, the KV heads one GPU holds: 2 * layers * kv_heads * head_dim * bytes."""
    return 2 * model.num_hidden_layers * kv_heads_per_gpu(model, tp) * model.head_dim * kv_bytes


@dataclass
class MemoryPlan:
    """Where one replica's GPU memory goes for a model, precision and tensor-parallel size: weights
    per GPU, KV bytes per token, KV capacity in tokens and the concurrent sequences it holds;
    `fits` says whether the weights leave room for any KV."""

    model: str
    gpu: str
    tp: int
    precision: str
    kv_dtype: str
    gpu_memory_gib: float
    weights_gib_per_gpu: float
    kv_bytes_per_token: int  # whole model, all GPUs of the replica
    kv_bytes_per_token_per_gpu: int
    kv_cache_gib_per_gpu: float
    kv_tokens: int  # tokens of KV the replica can hold
    seq_len: int
    max_concurrent_seqs: int
    fits: bool
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PlanInputs:
    """The knobs of a memory plan: tensor parallelism, weight and KV precision, memory utilization,
    per-GPU overhead, request lengths and KV block size."""

    tp: int = 1
    precision: str = "bf16"
    kv_dtype: str = "bf16"
    gpu_memory_utilization: float = 0.9
    overhead_gib: float = 2.0  # activations, CUDA graphs, NCCL and allocator slack per GPU
    input_len: int = 1024
    output_len: int = 1024
    block_size: int = 16


def plan_memory(model: ModelConfig, gpu: GpuSpec, inputs: PlanInputs) -> MemoryPlan:
    check_tp(model, inputs.tp)
    precision = resolve_precision(inputs.precision)
    weights = weight_bytes_per_gpu(model, inputs.tp, precision)
    per_gpu_token = kv_bytes_per_token(model, kv_dtype_bytes(inputs.kv_dtype), inputs.tp)
    budget = gpu.memory_bytes * inputs.gpu_memory_utilization - weights - inputs.overhead_gib * GIB
    blocks = max(0, int(budget // (per_gpu_token * inputs.block_size)))
    kv_tokens = blocks * inputs.block_size
    seq_len = inputs.input_len + inputs.output_len
    seq_blocks = math.ceil(seq_len / inputs.block_size)
    note = ""
    if model.max_model_len and seq_len > model.max_model_len:
        note = f"sequence of {seq_len} exceeds the model's context of {model.max_model_len}"
    elif blocks == 0:
        note = "weights do not leave room for KV cache"
    return MemoryPlan(
        model=model.name,
        gpu=gpu.name,
        tp=inputs.tp,
        precision=precision.name,
        kv_dtype=inputs.kv_dtype,
        gpu_memory_gib=round(gpu.memory_gib, 2),
        weights_gib_per_gpu=weights / GIB,
        kv_bytes_per_token=kv_bytes_per_token(model, kv_dtype_bytes(inputs.kv_dtype), 1),
        kv_bytes_per_token_per_gpu=per_gpu_token,
        kv_cache_gib_per_gpu=max(0.0, budget) / GIB,
        kv_tokens=kv_tokens,
        seq_len=seq_len,
        max_concurrent_seqs=0 if note.startswith("sequence") else blocks // seq_blocks,
        fits=blocks >= seq_blocks and not note,
        note=note,
    )
