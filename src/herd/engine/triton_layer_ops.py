"""Triton versions of the eager model's elementwise modules on CUDA: residual add + RMSNorm, RoPE
in place, SiLU-and-mul, and the fp8 linear's per-token activation quantisation, one kernel each
instead of 4-9 torch kernels (a batch-1 decode step is mostly such small kernels besides its
GEMVs). `use_triton_layer_ops` swaps them into a loaded model, as cpu_layer_ops does on CPU.
Each rounds where the torch version rounds; off CUDA (and outside the interpreter) they fall back.
"""

import torch
from torch import nn

from herd.engine import triton_attention
from herd.engine.triton_attention import next_pow2
from herd.model.llama import RMSNorm, SiluAndMul
from herd.model.quant import FP8, FP8_MAX, Fp8Linear, quantize_rows
from herd.model.rope import Rotary, in_place_layout

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _runs(x: torch.Tensor) -> bool:
    """Whether this call can take the kernel: a CUDA tensor (or any, under the interpreter) of a
    float dtype, outside a traced graph."""
    on = x.is_cuda or triton_attention.interpreting()
    return on and x.dtype in DTYPES and not torch.compiler.is_compiling()


class TritonRMSNorm(RMSNorm):
    """RMSNorm, and the residual add before it, in one kernel a row; the residual is updated in
    place (the caller hands it over)."""

    def forward(self, x, residual=None):
        if not (_runs(x) and self.flat_operands(x, residual)):
            return super().forward(x, residual)
        out = torch.empty_like(x)
        h = x.shape[-1]
        res = residual if residual is not None else x
        _get().add_rmsnorm[(x.numel() // h,)](
            x, res, self.weight, out, h, self.eps,
            HAS_RESIDUAL=residual is not None, BLOCK=next_pow2(h), num_warps=8 if h > 2048 else 4,
        )  # fmt: skip
        return out if residual is None else (out, residual)


class TritonSiluAndMul(SiluAndMul):
    """silu(gate) * up in one kernel, rounded as the torch version rounds."""

    def forward(self, gate_up):
        if not (_runs(gate_up) and gate_up.is_contiguous()):
            return super().forward(gate_up)
        n = gate_up.shape[-1] // 2
        out = gate_up.new_empty((*gate_up.shape[:-1], n))
        rows = gate_up.numel() // (2 * n)
        _get().silu_and_mul[(rows, -(-n // 1024))](gate_up, out, n, BLOCK=1024)
        return out


class TritonRotary(Rotary):
    """RoPE rotated in place, one program a token: x [T, H, D] may be a view into the fused QKV
    output (heads contiguous, any row stride); cos/sin [T, 1, D] in x's dtype."""

    def forward(self, x, cos_sin):
        cos, sin = cos_sin
        if not (_runs(x) and in_place_layout(x, cos, sin)):
            return super().forward(x, cos_sin)
        t, heads, d = x.shape
        _get().rope[(t,)](
            x, cos, sin, x.stride(0), heads, HALF=d // 2, BLOCK_H=next_pow2(heads),
            BLOCK_HALF=next_pow2(d // 2),
        )  # fmt: skip
        return x


def quantize_fp8(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, K] as e4m3 with a float32 scale per row (amax / 448, at least 1e-12): the values
    and rounding of `quant.quantize_rows`, one program a row."""
    if not (_runs(x2) and x2.is_contiguous()):
        return quantize_rows(x2)
    m, k = x2.shape
    xq = torch.empty((m, k), dtype=FP8, device=x2.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x2.device)
    _get().quantize_fp8[(m,)](x2, xq, scale, k, FP8_MAX, BLOCK=next_pow2(k), num_warps=8)
    return xq, scale


class TritonFp8Linear(Fp8Linear):
    """Fp8Linear whose activations are quantised per token by one kernel (amax, scale, e4m3
    cast) before `_scaled_mm`, instead of eight torch kernels."""

    quantize = staticmethod(quantize_fp8)


SWAPS = {RMSNorm: TritonRMSNorm, SiluAndMul: TritonSiluAndMul, Rotary: TritonRotary}
SWAPS[Fp8Linear] = TritonFp8Linear


def use_triton_layer_ops(model: nn.Module) -> int:
    """Swaps every RMSNorm, SiluAndMul, Rotary and Fp8Linear in `model` for its Triton version
    (state kept, not copied); returns how many, 0 without Triton."""
    if not triton_attention.available():
        return 0
    swapped = 0
    for module in model.modules():
        if (kind := SWAPS.get(type(module))) is not None:
            module.__class__ = kind
            swapped += 1
    return swapped


def _get():
    """The kernel module (triton_layer_kernels), imported on first use: it imports Triton."""
    from herd.engine import triton_layer_kernels

    return triton_layer_kernels
