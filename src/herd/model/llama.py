"""The Llama decoder over packed tokens: RMSNorm, GQA attention with RoPE, SwiGLU MLP.

Tokens of all scheduled requests are packed into one [T, hidden] batch. Attention is delegated
to an `attend(layer, q, k, v)` callable the runner passes in, so the model does not know which
attention backend (or KV cache layout) is used. QKV and gate/up projections are fused at load.
Under tensor parallelism (`herd.model.parallel.Shard`) each rank builds its slice of every layer.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.config import ModelConfig
from herd.model.parallel import SINGLE, Shard, VocabParallelEmbedding
from herd.model.rope import Rotary, RotaryEmbedding

CosSin = tuple[torch.Tensor, torch.Tensor]

# attend(layer_idx, q [T,Hq,D], k [T,Hkv,D], v [T,Hkv,D]) -> [T,Hq,D]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale, computed in float32 for stability whatever
    the activation dtype. Given the residual stream too, it first adds x to it (one fused call
    where a backend swaps in a native version) and returns (normed, new residual)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

    def flat_operands(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        """Whether a kernel version may take this call: x, the weight and the residual
        contiguous, of one dtype, the residual of x's shape."""
        operands = [x, self.weight] + ([residual] if residual is not None else [])
        same = all(t.is_contiguous() and t.dtype == x.dtype for t in operands)
        return same and (residual is None or residual.shape == x.shape)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back before the weight, exactly as transformers does.
        # F.rms_norm: one fused kernel for the five ops (identical results; 10% less CPU measured).
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class SiluAndMul(nn.Module):
    """SwiGLU's activation: silu(gate) * up over the fused [.., 2 * inter] projection."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class LlamaAttention(nn.Module):
    """Self-attention with fused QKV and grouped-query heads: projects, applies RoPE, hands q/k/v
    to the attention backend (`attend`, which also writes the paged KV cache) and projects back."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, shard: Shard = SINGLE) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.shard = shard
        self.num_heads = shard.q_heads(cfg)
        self.num_kv_heads = shard.kv_heads(cfg)
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=cfg.attention_bias)
        self.rotary = Rotary()

    def forward(self, x: torch.Tensor, cos_sin: CosSin, attend: Attend) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        qk_size = self.q_size + self.kv_size
        # q and k heads rotated together: one set of RoPE ops per layer instead of two
        qk = qkv[:, :qk_size].view(t, self.num_heads + self.num_kv_heads, self.head_dim)
        q, k = self.rotary(qk, cos_sin).split([self.num_heads, self.num_kv_heads], dim=1)
        v = qkv[:, qk_size:].view(t, self.num_kv_heads, self.head_dim)
        out = attend(self.layer_idx, q, k, v)
        return self.shard.all_reduce(self.o_proj(out.reshape(t, self.q_size)))


class LlamaMLP(nn.Module):
    """The SwiGLU feed-forward block with fused gate and up projections."""

    def __init__(self, cfg: ModelConfig, shard: Shard = SINGLE) -> None:
        super().__init__()
        self.shard = shard
        self.inter = shard.intermediate(cfg)
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shard.all_reduce(self.down_proj(self.act_fn(self.gate_up_proj(x))))


class LlamaDecoderLayer(nn.Module):
    """One pre-norm decoder layer: attention and MLP, each with a residual connection. The
    residual stream travels beside the hidden states (x, residual), so each residual add is fused
    with the norm after it; the sums, and their rounding, are those of x + attn(x) + mlp(..)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, shard: Shard = SINGLE) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, shard)
        self.mlp = LlamaMLP(cfg, shard)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, cos_sin: CosSin, attend: Attend
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the last layer's output (the embeddings, with residual None, for the first)."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos_sin, attend)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """The Llama decoder over packed tokens (all sequences of a step in one flat batch):
    embeddings, layers, final norm and the lm_head (tied to the embeddings when the config says
    so). Knows nothing of scheduling or the cache layout: attention goes through the backend
    passed in."""

    def __init__(self, cfg: ModelConfig, shard: Shard = SINGLE) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg, shard)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, shard) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        cos_sin = self.rotary_emb(positions, x.dtype)
        for layer in self.layers:
            x, residual = layer(x, residual, cos_sin, attend)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    """Hidden states for packed tokens; `compute_logits` only on the rows that need them (under
    tensor parallelism rank 0 gets the whole vocabulary, the other ranks `serve_logits`)."""

    def __init__(self, cfg: ModelConfig, shard: Shard = SINGLE) -> None:
        super().__init__()
        self.config = cfg
        self.shard = shard
        self.model = LlamaModel(cfg, shard)
        self.lm_head = nn.Linear(cfg.hidden_size, shard.vocab_rows(cfg), bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        return self.model(input_ids, positions, attend)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.shard.logits(self.lm_head, hidden, self.config.vocab_size)

    def serve_logits(self, dtype: torch.dtype) -> None:
        """Ranks > 0: follow rank 0's `compute_logits` calls until its step ends."""
        self.shard.serve_logits(self.lm_head, self.config.hidden_size, dtype)
