"""`DecodeGraphs`: decode steps through `torch.compile`, one static-shape graph per batch bucket
(inductor's C++ backend on CPU, with freezing: weights prepacked for oneDNN), as vLLM captures
CUDA graphs (on CUDA herd captures graphs instead: `cuda_graphs.GraphedDecode`). A decode batch
is padded up to its bucket (`InputBuffers`); its padding rows write their K/V into a scratch
block nobody owns. Attention is an opaque custom op, so one graph covers the whole step
(embeddings to logits) while the paged cache stays outside the compiler's view.
"""

import logging
import threading
import time
from typing import Any

import torch
from torch import nn

from herd.engine.attention import AttentionBackend
from herd.engine.input_buffers import InputBuffers, StepInputs
from herd.engine.native_build import march

log = logging.getLogger(__name__)

# The cache and backend the attention op reads. Set by `DecodeGraphs.run` before each call, per
# thread: an engine is driven by one thread, and tests may run several engines in one process.
_current = threading.local()


@torch.library.custom_op("herd::paged_decode", mutates_args=())
def paged_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    """Stores this step's K/V of `layer` and attends every row (query length 1) to its context,
    through the backend and step metadata `DecodeGraphs.run` set. The cache is written in place;
    the compiler sees only q, k, v in and the output out."""
    cache = _current.kv_cache
    return _current.backend.forward(q, k, v, cache[layer, 0], cache[layer, 1], _current.meta)


@paged_decode.register_fake
def _(q, k, v, layer):
    return torch.empty_like(q)


class _DecodeStep(nn.Module):
    """Embeddings to logits for a batch of single-token decodes, attention through the op."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions):
        def attend(layer, q, k, v):
            return paged_decode(q, k, v, layer)

        return self.model.compute_logits(self.model(input_ids, positions, attend))


class DecodeGraphs:
    """Compiled decode steps for batch sizes up to the largest bucket. `run` pads the batch to
    its bucket, compiles that bucket on first use (logging the time), and returns the real rows'
    logits, equal to eager's within the dtype's rounding. A bucket whose compilation fails is
    logged and left eager (`run` returns None): compiling is an optimisation, never a failure."""

    def __init__(
        self,
        model: nn.Module,
        backend: AttentionBackend,
        buckets: list[int],
        inputs: InputBuffers,
        device: torch.device,
    ) -> None:
        self.step = _DecodeStep(model)
        self.backend = backend
        self.buckets = sorted(buckets)
        self.inputs = inputs
        self.device = device
        self.full_width = False  # the table is outside the graph: any width
        self.compiled: set[int] = set()
        self.failed: set[int] = set()
        torch._dynamo.config.recompile_limit = max(8, 2 * len(self.buckets))
        self.fn = torch.compile(self.step, dynamic=False)

    def bucket_for(self, n: int) -> int | None:
        return bucket_for(self.buckets, self.failed, n)

    def run(self, step: StepInputs, kv_cache: torch.Tensor) -> torch.Tensor | None:
        """Logits of the real rows of a decode step padded to its bucket (`InputBuffers`), or
        None when the bucket failed to compile."""
        b = len(step.input_ids)
        _current.backend, _current.kv_cache = self.backend, kv_cache
        _current.meta = step.metadata()
        first = b not in self.compiled
        t0 = time.perf_counter()
        try:
            if first:  # compiles now; freezing is read outside inductor's per-compile options
                with torch._inductor.config.patch(freezing=self.device.type == "cpu"):
                    logits = self.fn(step.input_ids, step.positions)
            else:
                logits = self.fn(step.input_ids, step.positions)
        except Exception:  # noqa: BLE001 - any compiler failure leaves this bucket eager
            log.exception("compiling the decode step for batch %d failed; it stays eager", b)
            self.failed.add(b)
            return None
        if first:
            self.compiled.add(b)
            log.info(
                "compiled decode batch bucket %d in %.1fs (torch.compile inductor, %s)",
                b,
                time.perf_counter() - t0,
                describe_backend(self.device),
            )
        return logits[: step.num_rows]

    @torch.inference_mode()  # as the runner's steps: the graphs are guarded on the grad mode
    def compile_all(self, kv_cache: torch.Tensor) -> None:
        """Compile every bucket now (a server's start-up), so no request ever waits for the
        compiler; the dummy rows (all padding) write only to the scratch block."""
        for b in self.buckets:
            if b not in self.compiled and b not in self.failed:
                self.run(self.inputs.prepare([], pad_to=b), kv_cache)


def bucket_for(buckets: list[int], failed: set[int], n: int) -> int | None:
    """The smallest bucket (sorted `buckets`) that holds a batch of n, None when none does or
    it failed to build: that batch runs eagerly."""
    for b in buckets:
        if b >= n:
            return None if b in failed else b
    return None


def describe_backend(device: torch.device) -> str:
    """What the compiled graphs run on, for the startup log."""
    if device.type == "cpu":
        isa = torch.backends.cpu.get_cpu_capability()
        return f"C++/OpenMP kernels {isa}, freezing: linears as prepacked oneDNN"
    return "Triton kernels"


def describe_kernels(
    backend: AttentionBackend, graphs: Any, device: torch.device, dtype, fused: Any = None
) -> str:
    """One start-up log line: which attention, fused, compiled or eager decode, the CPU's kernel
    ISA, threads, the OpenMP runtime and allocator loaded, and the process tuning applied."""
    from herd.engine.process_tuning import applied, loaded_runtime

    decode = f"{type(graphs).__name__} buckets {graphs.buckets}" if graphs else "eager"
    if fused is not None:
        decode = f"{fused.describe()}, above it {decode}"
    parts = [f"attention {backend.describe()}", f"decode steps {decode}", f"{dtype}"]
    if device.type == "cpu":
        parts += [
            f"ISA {torch.backends.cpu.get_cpu_capability()} (herd's kernels -march={march()})",
            f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}",
            f"{torch.get_num_threads()} threads",
            loaded_runtime(),
            f"process tuning: {applied()}",
        ]
    return "; ".join(parts)
