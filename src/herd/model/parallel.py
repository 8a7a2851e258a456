"""Tensor parallelism inside the model (Megatron's split): which slice of each weight one rank
holds, the vocab-parallel embedding, and the collectives that join the ranks' partial results.

QKV and gate/up are column-parallel (each rank its heads / its share of the MLP), o_proj and down
row-parallel (one all-reduce each), embedding and lm_head split by vocabulary rows. A `Shard` of
size 1 is the ordinary single-process model: every collective is then a no-op.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from herd.model.config import ModelConfig

# The logits header a driver sends when a step's last compute_logits is done.
END_OF_STEP = -1


@dataclass(frozen=True)
class Shard:
    """One rank of `size` that split a model: its share of heads, MLP and vocabulary, and the
    collectives over the default process group. Rank 0 drives (it alone samples); the others
    follow its `compute_logits` calls through `serve_logits`."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where collective headers live (CUDA tensors for NCCL)

    # ---- layout --------------------------------------------------------------------------

    def q_heads(self, cfg: ModelConfig) -> int:
        return cfg.num_attention_heads // self.size

    def kv_heads(self, cfg: ModelConfig) -> int:
        return cfg.kv_heads_per_rank(self.size)

    def kv_head_start(self, cfg: ModelConfig) -> int:
        """First KV head this rank holds; with fewer KV heads than ranks, consecutive ranks
        share one (the KV head their query heads read)."""
        kv = cfg.num_key_value_heads
        if kv >= self.size:
            return self.rank * (kv // self.size)
        return self.rank // (self.size // kv)

    def intermediate(self, cfg: ModelConfig) -> int:
        return cfg.intermediate_size // self.size

    def vocab_rows(self, cfg: ModelConfig) -> int:
        """Embedding / lm_head rows per rank: the vocabulary padded up to a multiple of size."""
        return -(-cfg.vocab_size // self.size)

    def check(self, cfg: ModelConfig) -> None:
        """A `ValueError` naming what does not split over `size` ranks."""
        cfg.check_tensor_parallel(self.size)
        if cfg.intermediate_size % self.size:
            raise ValueError(
                f"tp={self.size} must divide intermediate_size {cfg.intermediate_size}"
            )

    # ---- checkpoint slices ---------------------------------------------------------------

    def slice_weight(self, name: str, tensor: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
        """This rank's part of the checkpoint tensor `name` (Hugging Face naming)."""
        if self.size == 1:
            return tensor
        d = cfg.head_dim
        if ".self_attn.q_proj." in name:
            return _rows(tensor, self.rank * self.q_heads(cfg) * d, self.q_heads(cfg) * d)
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            return _rows(tensor, self.kv_head_start(cfg) * d, self.kv_heads(cfg) * d)
        if ".mlp.gate_proj." in name or ".mlp.up_proj." in name:
            n = self.intermediate(cfg)
            return _rows(tensor, self.rank * n, n)
        row_parallel = {".self_attn.o_proj.": self.q_heads(cfg) * d, ".mlp.down_proj.": 0}
        for frag, width in row_parallel.items():
            if frag in name:
                if name.endswith(".bias"):  # added once, after the all-reduce sums the ranks
                    return tensor if self.rank == 0 else torch.zeros_like(tensor)
                width = width or self.intermediate(cfg)
                return tensor[:, self.rank * width : (self.rank + 1) * width]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            n = self.vocab_rows(cfg)
            part = _rows(tensor, self.rank * n, n)
            pad = n - part.shape[0]  # the last rank's rows past the vocabulary stay zero
            return F.pad(part, (0, 0, 0, pad)) if pad else part
        return tensor  # norms: replicated

    # ---- collectives ---------------------------------------------------------------------

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums a row-parallel layer's partial outputs over the ranks (in place)."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def min_over_ranks(self, n: int) -> int:
        """The smallest `n` any rank has (KV blocks: every rank must hold the same pool)."""
        if self.size == 1:
            return n
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def logits(self, lm_head: nn.Module, hidden: torch.Tensor, vocab: int) -> torch.Tensor:
        """Rank 0: full-vocabulary float32 logits for `hidden` rows. The other ranks, waiting in
        `serve_logits`, receive the rows, apply their vocabulary slice and gather."""
        if self.size == 1:
            return lm_head(hidden).float()
        header = torch.tensor([hidden.shape[0]], dtype=torch.long, device=self.device)
        dist.broadcast(header, src=0)
        dist.broadcast(hidden.contiguous(), src=0)
        return self._gather(lm_head, hidden)[:, :vocab]

    def serve_logits(self, lm_head: nn.Module, hidden_size: int, dtype: torch.dtype) -> None:
        """Ranks > 0: take part in each of rank 0's `logits` calls until it ends the step."""
        header = torch.zeros(1, dtype=torch.long, device=self.device)
        while True:
            dist.broadcast(header, src=0)
            rows = int(header.item())
            if rows == END_OF_STEP:
                return
            hidden = torch.empty(rows, hidden_size, dtype=dtype, device=self.device)
            dist.broadcast(hidden, src=0)
            self._gather(lm_head, hidden)

    def end_step(self) -> None:
        """Rank 0: this step computes no more logits; the other ranks leave `serve_logits`."""
        if self.size > 1:
            header = torch.tensor([END_OF_STEP], dtype=torch.long, device=self.device)
            dist.broadcast(header, src=0)

    def _gather(self, lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        local = lm_head(hidden).float()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=-1)


SINGLE = Shard()


class VocabParallelEmbedding(nn.Embedding):
    """The embedding table split by vocabulary rows: each rank looks up the ids in its range,
    zeros elsewhere, and an all-reduce assembles the rows. With one rank a plain embedding."""

    def __init__(self, cfg: ModelConfig, shard: Shard) -> None:
        super().__init__(shard.vocab_rows(cfg), cfg.hidden_size)
        self.shard = shard
        self.start = shard.rank * shard.vocab_rows(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.shard.size == 1:
            return super().forward(ids)
        local = ids - self.start
        inside = (local >= 0) & (local < self.num_embeddings)
        x = super().forward(local.clamp(0, self.num_embeddings - 1))
        return self.shard.all_reduce(x * inside.unsqueeze(-1).to(x.dtype))


def _rows(t: torch.Tensor, start: int, n: int) -> torch.Tensor:
    return t[start : start + n]
