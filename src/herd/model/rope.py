"""Rotary position embeddings with Llama 3's frequency scaling, as transformers computes them."""

import math

import torch

from herd.model.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (
        rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    )
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type != "llama3":
        return inv_freq
    # Llama 3.1: leave high frequencies alone, divide low ones by `factor`, blend in between.
    low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (tokens are packed, not padded)."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        inv_freq = inverse_frequencies(rope, head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for the packed tokens' positions, [T, 1, D], in the activations' dtype
        (as transformers casts them); looked up once per forward and shared by every layer."""
        cos = self.cos[positions].unsqueeze(1).to(dtype)
        return cos, self.sin[positions].unsqueeze(1).to(dtype)


class Rotary(torch.nn.Module):
    """Applies RoPE to a layer's q and k heads (`apply_rotary`); a module so that a backend can
    swap in a native version, which may rotate in place."""

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return apply_rotary(x, cos_sin)


def apply_rotary(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x [T, H, D] (half-split layout, as transformers does). The decoder passes q and k
    heads together ([T, Hq + Hkv, D], one slice of the fused projection): one set of ops a layer.
    """
    cos, sin = cos_sin
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def in_place_layout(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether a kernel may rotate x [T, H, D] in place: heads contiguous (any row stride), one
    contiguous cos/sin row [T, 1, D] per token, all in x's dtype."""
    t, _, d = x.shape
    heads_ok = x.stride(2) == 1 and x.stride(1) == d and d % 2 == 0
    return heads_ok and all(
        c.dtype == x.dtype and c.is_contiguous() and c.numel() == t * d and c.shape[0] == t
        for c in (cos, sin)
    )
