"""`GraphedDecode`: decode steps replayed from CUDA graphs, one per batch bucket, as vLLM does.
The eager step (embeddings to logits, with the attention backend's metadata work) is captured
reading `InputBuffers`' fixed-address device inputs, so a replay costs the step's one input copy
and one launch instead of a launch per kernel. Eager, not `torch.compile`d: capturing every bucket
of an 8B model takes seconds, where inductor would take minutes.
"""

import logging
import time

import torch
from torch import nn

from herd.engine.attention import AttentionBackend
from herd.engine.compiled import bucket_for
from herd.engine.input_buffers import InputBuffers, StepInputs

log = logging.getLogger(__name__)


class GraphedDecode:
    """Decode batches up to the largest bucket, padded to their bucket (`InputBuffers`, full-width
    block tables: the shapes a graph was captured with). `run` captures a bucket on first use
    (or `capture_all` at start-up, largest first so smaller graphs reuse its memory pool) and
    replays it, returning the real rows' logits. With `capture=False` (the default off CUDA) the
    same static-buffer step runs without graphs: how the CPU tests exercise everything but the
    capture. A bucket whose capture fails is logged and left eager (`run` returns None)."""

    full_width = True

    def __init__(
        self,
        model: nn.Module,
        backend: AttentionBackend,
        buckets: list[int],
        inputs: InputBuffers,
        capture: bool | None = None,
    ) -> None:
        self.model, self.backend, self.inputs = model, backend, inputs
        self.buckets = sorted(buckets)
        self.capture = inputs.device.type == "cuda" if capture is None else capture
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.captured: set[int] = set()  # buckets that ran through the static path
        self.failed: set[int] = set()
        self.pool = None  # one memory pool shared by every bucket's graph

    @staticmethod
    def supports(backend: AttentionBackend) -> bool:
        """A graph reads full-width block tables: a backend that gathers each row's table
        (TorchAttention) would gather `max_model_len` tokens per row, so only one that reads the
        cache in place through its tables (TritonAttention, FlexAttention) is captured."""
        return backend.graph_safe

    def bucket_for(self, n: int) -> int | None:
        return bucket_for(self.buckets, self.failed, n)

    def run(self, step: StepInputs, kv_cache: torch.Tensor) -> torch.Tensor | None:
        """Logits of the real rows of a padded decode step."""
        b = len(step.input_ids)
        if not self.capture:
            self.captured.add(b)
            return self._forward(step, kv_cache)[: step.num_rows]
        if b not in self.graphs:
            try:
                self._capture(b, step, kv_cache)
            except Exception:  # noqa: BLE001 - a failed capture leaves this bucket eager
                log.exception("capturing the decode step for batch %d failed; it stays eager", b)
                self.failed.add(b)
                torch.cuda.synchronize()
                return None
        graph, logits = self.graphs[b]
        graph.replay()
        return logits[: step.num_rows]

    @torch.inference_mode()  # as the runner's steps
    def compile_all(self, kv_cache: torch.Tensor) -> None:
        """Capture every bucket now (a server's start-up), largest first; the dummy rows (all
        padding) write only to the scratch block."""
        for b in reversed(self.buckets):
            if b not in self.graphs and b not in self.failed:
                self.run(self.inputs.prepare([], pad_to=b, full_width=True), kv_cache)

    def _forward(self, step: StepInputs, kv_cache: torch.Tensor) -> torch.Tensor:
        meta = step.metadata()  # fresh per call: a backend's per-step state is rebuilt

        def attend(layer, q, k, v):
            return self.backend.forward(q, k, v, kv_cache[layer, 0], kv_cache[layer, 1], meta)

        return self.model.compute_logits(self.model(step.input_ids, step.positions, attend))

    def _capture(self, b: int, step: StepInputs, kv_cache: torch.Tensor) -> None:
        """Warm up on a side stream (lazy initialisation, compiled kernels, library handles stay
        out of the graph), then capture. The warm-up writes this step's K/V; the replay that
        follows writes the same values again."""
        t0 = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(step, kv_cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(step, kv_cache)
        self.pool = graph.pool()
        self.graphs[b] = (graph, logits)
        self.captured.add(b)
        log.info(
            "captured decode batch bucket %d in %.2fs (CUDA graph)", b, time.perf_counter() - t0
        )
