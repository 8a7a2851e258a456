"""`ModelRunner`: owns the model and the paged KV cache; turns a `SchedulerOutput` into one
packed forward pass and samples the next tokens."""

import logging
import time
from dataclasses import dataclass, field

import torch

from herd.engine.backends import get_backend
from herd.engine.compiled import DecodeGraphs, describe_backend, describe_kernels
from herd.engine.config import FUSED_ROWS_MAX_BATCH, EngineConfig
from herd.engine.cpu_block_linear import pack_blocks
from herd.engine.cpu_decoder import CpuDecoder
from herd.engine.cpu_layer_ops import use_native_layer_ops
from herd.engine.cuda_graphs import GraphedDecode
from herd.engine.huge_pages import rehome_weights
from herd.engine.input_buffers import InputBuffers, StepInputs
from herd.engine.native_build import cpu_flags
from herd.engine.process_tuning import preload_hint
from herd.engine.rejection import Emitted, Verified, verify_drafts
from herd.engine.request import Request
from herd.engine.sampler import Sampler, SamplerOutput, rank_logprobs, to_device
from herd.engine.scheduler import ScheduledRequest, SchedulerOutput
from herd.engine.structured import StructuredOutputs
from herd.engine.triton_layer_ops import use_triton_layer_ops
from herd.model import packed_linear
from herd.model.config import ModelConfig
from herd.model.loader import load_model
from herd.model.parallel import SINGLE, Shard

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# kv_cache_dtype -> storage; "auto" is the activation dtype. fp8 halves bf16's bytes per block.
KV_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "fp8": torch.float8_e4m3fn}
CPU_KV_DEFAULT_BYTES = 1 << 30
AMX_ONEDNN_ABOVE = 32  # rows past which BlockLinears on AMX CPUs run oneDNN (a guess: unmeasured)


@dataclass
class RunnerOutput:
    """What one model step produced, keyed by request id: the sampled token, its logprob, the top
    logprobs when asked, and prompt logprobs for requests that finished their prompt this step."""

    sampled: dict[str, int] = field(default_factory=dict)  # request id -> new token
    logprobs: dict[str, dict[int, float] | None] = field(default_factory=dict)
    sampled_logprobs: dict[str, float] = field(default_factory=dict)
    # request id -> logprobs of the prompt positions computed this step (prompt_logprobs)
    prompt_logprobs: dict[str, list[dict[int, float]]] = field(default_factory=dict)
    # speculative decoding: request id -> its verified drafts (engine/rejection.py)
    verified: dict[str, Verified] = field(default_factory=dict)

    def tokens_of(self, request_id: str) -> list[Emitted]:
        """The tokens this step emits for a request, in order (none, one, or verified drafts)."""
        if request_id in self.verified:
            return self.verified[request_id].emitted
        if request_id not in self.sampled:
            return []
        lps = self.logprobs[request_id]
        return [(self.sampled[request_id], lps, self.sampled_logprobs[request_id])]


def resolve_dtype(name: str, model_config: ModelConfig, device: torch.device) -> torch.dtype:
    """`auto` is the checkpoint's dtype, except on a CPU without bf16 instructions, where
    half-precision matmuls are emulated and measured 5-8x slower than float32 (see
    benchmarks/RESULTS.md); an explicit dtype is always honoured."""
    if name == "auto":
        name = model_config.torch_dtype if model_config.torch_dtype in DTYPES else "float32"
        if device.type == "cpu" and name != "float32":
            name = "bfloat16" if cpu_has_bf16() else "float32"
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when torch sees one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def gpu_kv_budget(total: int, free: int, used_by_us: int, utilization: float, reserve: int) -> int:
    """KV pool bytes as vLLM sizes it: herd may use `utilization` of the GPU's TOTAL memory,
    weights (`used_by_us`, already allocated) and the activation `reserve` included; never more
    than is free now (another process may hold the rest)."""
    budget = int(total * utilization) - used_by_us - reserve
    budget = min(budget, free - reserve)
    if budget <= 0:
        gib = 1 << 30
        raise ValueError(
            f"gpu_memory_utilization {utilization} leaves no room for the KV cache: "
            f"{total / gib:.1f} GiB x {utilization} - weights {used_by_us / gib:.2f} GiB - "
            f"activations {reserve / gib:.2f} GiB (free now {free / gib:.1f} GiB)"
        )
    return budget


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


class ModelRunner:
    """Runs the model for the scheduler: loads weights (quantized if configured), sizes and
    allocates the KV pool, packs the step's tokens (decodes first), builds attention metadata,
    computes logits only for rows that sample, and samples. `execute(SchedulerOutput)` is its
    one entry per step. Under tensor parallelism it holds one rank's `shard` of the model and
    KV heads; on rank 0 `driver` (herd.engine.distributed) runs each step on every rank."""

    def __init__(
        self,
        config: EngineConfig,
        model_config: ModelConfig,
        max_model_len: int,
        shard: Shard = SINGLE,
        driver=None,  # herd.engine.distributed.TensorParallel on rank 0 when tp > 1
    ) -> None:
        self.config = config
        self.model_config = model_config
        self.shard = shard
        self.driver = driver
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, model_config, self.device)
        self.block_size = config.block_size
        t0 = time.perf_counter()
        self.model = load_model(
            config.model, model_config, self.dtype, self.device, config.quantization, shard
        )
        self.blocks, self.amx = 0, False  # linears packed in blocks (BlockLinear); AMX CPU
        if self.device.type == "cpu":
            self._pack_linears(config.prepack_weights)
            rehome_weights(self.model)  # decode streams them: 2 MiB pages read faster
            if n := use_native_layer_ops(self.model):
                log.info("%d norms, activations and rotaries run native (cpu_layer_ops.cpp)", n)
        elif self.device.type == "cuda" and (n := use_triton_layer_ops(self.model)):
            log.info("%d norms, activations, rotaries and fp8 linears run Triton kernels", n)
        self.kv_dtype = KV_DTYPES.get(config.kv_cache_dtype, self.dtype)
        # What /v1/models and herd_model_info report (a pre-quantized checkpoint included).
        self.precision = {
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantization": self.model.quantization or "none",
            "kv_cache_dtype": "fp8" if self.kv_dtype.itemsize == 1 else str(self.kv_dtype)[6:],
        }
        log.info(
            "loaded weights in %.2fs on %s (%s)",
            time.perf_counter() - t0,
            self.device,
            ", ".join(f"{k} {v}" for k, v in self.precision.items()),
        )
        self.num_blocks = shard.min_over_ranks(self._num_kv_blocks(max_model_len))
        shape = (
            model_config.num_hidden_layers,
            2,
            self.num_blocks + 1,  # the last block is scratch: compiled graphs' padding rows
            self.block_size,
            shard.kv_heads(model_config),
            model_config.head_dim,
        )
        self.kv_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        log.info("allocated %d KV blocks of %d tokens", self.num_blocks, self.block_size)
        self.backend = get_backend(config.attention_backend, self.block_size, self.device)
        log.info("attention backend %s", type(self.backend).__name__)
        self.sampler = Sampler(model_config.eos_token_ids, config.seed)
        self.structured: StructuredOutputs | None = None  # set by LLMEngine
        sc = config.scheduler  # one preallocated, asynchronously copied set of inputs per step
        self.inputs = InputBuffers(
            max(sc.max_num_batched_tokens, sc.max_num_seqs),
            sc.max_num_seqs,
            -(-max_model_len // self.block_size) + 1,
            self.block_size,
            scratch_block=self.num_blocks,
            device=self.device,
        )
        self.fused = self._fused_decoder()
        self.graphs = self._decode_graphs()
        kernels = describe_kernels(self.backend, self.graphs, self.device, self.dtype, self.fused)
        log.info("kernels: %s", kernels)
        if self.device.type == "cpu" and (hint := preload_hint()):
            log.info("start this process with %s for herd replica's tuning", hint)

    def _pack_linears(self, prepack: bool) -> None:
        """Linears on CPU: packed in blocks for herd's kernels (one copy of the weights) where
        the CPU runs them (AVX-512 or AVX2), else bf16 ones prepacked for oneDNN beside the plain
        weights."""
        if not prepack:
            return
        # AMX: oneDNN's tile kernels should outrun the AVX-512 blocks on prefill-sized products
        # (not measured: no AMX machine here), so those keep oneDNN's copy for them as well.
        bf16 = self.dtype == torch.bfloat16
        amx = bf16 and "amx_bf16" in cpu_flags() and packed_linear.available()
        if n := pack_blocks(self.model, AMX_ONEDNN_ABOVE if amx else None):
            self.blocks, self.amx = n, amx
            also = f", and for oneDNN's AMX kernels above {AMX_ONEDNN_ABOVE} rows" if amx else ""
            log.info("%d linears packed in blocks for herd's kernels%s", n, also)
        elif packed_linear.available() and (n := packed_linear.pack_linears(self.model)):
            log.info("%d bf16 linears prepacked for oneDNN (prepack_weights)", n)

    def _fused_decoder(self) -> CpuDecoder | None:
        if self.device.type != "cpu":
            return None
        top = self.config.fused_decode_max_batch
        if top is None:  # every batch from blocks; from weight rows it loses past a few dozen
            every = self.blocks and not self.amx  # AMX: eager steps' oneDNN above AMX_ONEDNN_ABOVE
            top = self.config.scheduler.max_num_seqs if every else FUSED_ROWS_MAX_BATCH
        top = min(top, self.config.scheduler.max_num_seqs)
        return CpuDecoder.create(self.model, self.kv_cache, self.backend, top)

    def _decode_graphs(self) -> DecodeGraphs | GraphedDecode | None:
        if self.config.enforce_eager:
            log.info("enforce_eager: every step runs eagerly")
            return None
        if self.shard.size > 1:
            log.info("tensor parallel: decode steps run eagerly (no compiled graphs across ranks)")
            return None
        cuda = self.device.type == "cuda"
        if cuda and not GraphedDecode.supports(self.backend):
            log.info("no CUDA graphs with attention backend %s", type(self.backend).__name__)
            return None
        top = self.config.cuda_graph_max_batch if cuda else self.config.compile_max_batch
        top = min(top, self.config.scheduler.max_num_seqs)
        buckets = [1 << i for i in range(top.bit_length()) if 1 << i < top] + [top]
        fused = self.fused.max_batch if self.fused is not None else 0
        if top <= fused:
            return None  # every batch a graph would take runs fused
        buckets = [b for b in buckets if b > fused]
        kind = "captured as CUDA graphs" if cuda else "compiled"
        log.info(
            "decode batches up to %d %s (built at start-up: LLMEngine.compile_decode), buckets %s",
            top,
            kind,
            buckets,
        )
        if cuda:
            return GraphedDecode(self.model, self.backend, buckets, self.inputs)
        log.info("compiled decode steps: %s", describe_backend(self.device))
        return DecodeGraphs(self.model, self.backend, buckets, self.inputs, self.device)

    def kv_bytes_per_block(self) -> int:
        m = self.model_config
        elem = self.kv_dtype.itemsize
        heads = self.shard.kv_heads(m)
        return 2 * m.num_hidden_layers * self.block_size * heads * m.head_dim * elem

    def _num_kv_blocks(self, max_model_len: int) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        budget = self.config.kv_cache_memory
        if budget is None:
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                budget = gpu_kv_budget(
                    total,
                    free,
                    torch.cuda.memory_allocated(self.device),
                    self.config.gpu_memory_utilization,
                    self._activation_reserve(),
                )
            else:
                budget = CPU_KV_DEFAULT_BYTES
        # Never more than every sequence at full length needs.
        most = self.config.scheduler.max_num_seqs * -(-max_model_len // self.block_size)
        return max(1, min(int(budget // self.kv_bytes_per_block()), most))

    def _activation_reserve(self) -> int:
        """Bytes one step's activations may peak at: a full token budget through an MLP and
        attention, plus float32 logits over the vocabulary for every row (prompt_logprobs)."""
        m, tokens = self.model_config, self.config.scheduler.max_num_batched_tokens
        width = 4 * m.hidden_size + 3 * m.intermediate_size
        width += (m.num_attention_heads + 2 * m.num_key_value_heads) * m.head_dim
        return tokens * (width * self.dtype.itemsize + 4 * m.vocab_size)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        # Decodes first: the attention backend batches them.
        items = sorted(sched.scheduled, key=lambda s: s.num_new_tokens != 1)
        if self.driver is not None:  # every tensor-parallel rank runs this step's forward
            return self.driver.step(items, self._execute)
        return self._execute(items)

    def _execute(self, items: list[ScheduledRequest]) -> RunnerOutput:
        plain = _all_plain_decodes(items)
        if plain and self.fused is not None and len(items) <= self.fused.max_batch:
            logits = self.fused.run(self.inputs.prepare(items), self.kv_cache)
            return self._sample_logits([s.req for s in items], logits, RunnerOutput())
        graphs = self.graphs if self.graphs is not None and plain else None
        bucket = graphs.bucket_for(len(items)) if graphs is not None else None
        full = bucket is not None and graphs.full_width
        step = self.inputs.prepare(items, pad_to=bucket, full_width=full)
        if bucket is not None:
            logits = graphs.run(step, self.kv_cache)
            if logits is not None:
                return self._sample_logits([s.req for s in items], logits, RunnerOutput())
        return self._sample(items, self._forward(step))  # a failed bucket: eager, as padded

    @torch.inference_mode()
    def forward(self, items: list[ScheduledRequest]) -> torch.Tensor:
        """Hidden states of a step given as plain data (what tensor-parallel ranks > 0 run)."""
        return self._forward(self.inputs.prepare(items))

    def _forward(self, step: StepInputs) -> torch.Tensor:
        meta = step.metadata()
        return self.model(
            step.input_ids,
            step.positions,
            lambda layer, q, k, v: self.backend.forward(
                q, k, v, self.kv_cache[layer, 0], self.kv_cache[layer, 1], meta
            ),
        )

    def _sample(self, items: list[ScheduledRequest], hidden: torch.Tensor) -> RunnerOutput:
        out = RunnerOutput()
        rows, samplers, prompt_rows = [], [], []
        start = 0
        for s in items:
            end = start + s.num_new_tokens
            if s.req.params.prompt_logprobs is not None and s.start < s.req.num_prompt_tokens:
                prompt_rows.append((s, start, end))
            if s.samples:  # one row, or 1 + k rows when k drafts are verified
                rows.extend(range(end - 1 - len(s.spec_token_ids), end))
                samplers.append(s)
            start = end
        if rows:
            logits = self.model.compute_logits(hidden[to_device(rows, torch.long, self.device)])
            if len(rows) == len(samplers):
                self._sample_logits([s.req for s in samplers], logits, out)
            else:  # speculative decoding: rejection sampling over the drafts
                reqs, drafts = [s.req for s in samplers], [s.spec_token_ids for s in samplers]
                verified = verify_drafts(reqs, drafts, logits, self._sample_rows)
                out.verified = {r.request_id: v for r, v in zip(reqs, verified, strict=True)}
        for s, a, b in prompt_rows:
            out.prompt_logprobs[s.req.request_id] = self._prompt_logprobs(s, hidden[a:b])
        return out

    def _sample_logits(
        self, reqs: list[Request], logits: torch.Tensor, out: RunnerOutput
    ) -> RunnerOutput:
        result = self._sample_rows(reqs, logits)
        for i, req in enumerate(reqs):
            out.sampled[req.request_id] = result.token_ids[i]
            out.logprobs[req.request_id] = result.logprobs[i]
            out.sampled_logprobs[req.request_id] = result.sampled_logprobs[i]
        return out

    def _sample_rows(self, reqs: list[Request], logits: torch.Tensor) -> SamplerOutput:
        # Structured outputs: the one place grammar masks touch logits (rows without a grammar
        # are left alone), before every sampling transform, on the eager and compiled paths.
        if self.structured is not None:
            logits = self.structured.mask_logits(logits, reqs)
        return self.sampler(logits, reqs)

    def _prompt_logprobs(self, s: ScheduledRequest, hidden: torch.Tensor) -> list[dict[int, float]]:
        """Logprobs of prompt tokens start+1 .. (the first prompt token has none)."""
        req: Request = s.req
        last = min(s.start + s.num_new_tokens, req.num_prompt_tokens - 1)
        n = last - s.start
        if n <= 0:
            return []
        logprobs = torch.log_softmax(self.model.compute_logits(hidden[:n]), dim=-1)
        targets = req.all_token_ids[s.start + 1 : last + 1]
        k = req.params.prompt_logprobs or 0
        return [rank_logprobs(logprobs[i], tok, k) for i, tok in enumerate(targets)]


def _all_plain_decodes(items: list[ScheduledRequest]) -> bool:
    """Every row computes one token and samples it, and none asks for prompt logprobs: the shape
    a compiled decode graph takes."""
    return all(
        s.num_new_tokens == 1
        and s.samples
        and (s.req.params.prompt_logprobs is None or s.start >= s.req.num_prompt_tokens)
        for s in items
    )
