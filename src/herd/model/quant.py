"""Weight-only quantized linears (int8 per channel, int4 per group, fp8 e4m3 per channel) and the
module swap that puts them in place of a model's decoder linears at load time (gpt-fast style).

Embeddings, norms and lm_head keep the activation dtype. Kernels are PyTorch's own: on CPU
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`; on CUDA the same int8 op, the tinygemm
int4 op and `_scaled_mm` for fp8 (the CUDA paths are written but were never run on a GPU).
"""

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Names as `--quantization` takes them; None and "none" both mean full precision.
QUANTIZATIONS = ("none", "int8", "int4", "fp8")
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
# Groups of 32 as llama.cpp's Q4_0 / Q4_1 (whose blocks then load as they are): 5 bits a weight
# with the bf16 scale and zero, 31% of bf16; larger groups measured clearly worse on SmolLM2.
INT4_GROUP_SIZES = (32,)


def normalize(quantization: str | None) -> str | None:
    """None for full precision, else one of int8 / int4 / fp8; anything else is a ValueError."""
    if quantization in (None, "none"):
        return None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    return quantization


class Int8Linear(nn.Module):
    """y = x @ (q * s)^T with q int8 [N, K] and one scale per output channel (symmetric).
    Halves weight bytes against bf16; `_weight_int8pack_mm` reads the int8 weight directly."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        w = linear.weight.detach()
        scales = (w.float().abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(w.float() / scales[:, None]).clamp(-128, 127).to(torch.int8)
        return cls(q, scales.to(w.dtype), _bias(linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _kernel_input(x)
        y = torch._weight_int8pack_mm(x2, self.weight, self.scales.to(x2.dtype))
        y = y.to(x.dtype).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    """x as 2-D for the int8/int4 kernels, float32 narrowed to bf16: PyTorch's CPU kernels have
    no vectorised float32 path (measured 50-100x slower than bf16 on this CPU)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2.to(torch.bfloat16) if x2.dtype == torch.float32 else x2


def quantize_int4_groups(w: torch.Tensor, group_size: int):
    """Asymmetric 4-bit per group of `group_size` inputs: w ≈ (q - 8) * scale + zero, with
    q in 0..15 (int32 [N, K]) and scale/zero float32 [N, K // group_size] (tinygemm's form)."""
    n, k = w.shape
    g = w.float().view(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return q.view(n, k), scale, lo + 8 * scale


def int4_group_size(in_features: int, preferred: int | None = None) -> int:
    sizes = (preferred,) if preferred else INT4_GROUP_SIZES
    for g in sizes:
        if in_features % g == 0:
            return g
    raise ValueError(f"int4 needs an input width divisible by a group size {sizes}: {in_features}")


class Int4Linear(nn.Module):
    """4-bit weights packed for PyTorch's int4 matmul, with a scale and zero per group of
    inputs. 5 bits a weight with groups of 32 (scale and zero in bf16), 31% of bf16's bytes."""

    def __init__(self, q, scale, zero, group_size, bias, dtype):
        super().__init__()
        self.group_size = group_size
        self.out_features = q.shape[0]
        self.on_cuda = q.device.type == "cuda"
        self.register_buffer("weight", _pack_int4(q))
        # [K // group, N, 2]: the layout both the CPU and the tinygemm kernel read.
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_and_zeros", sz.to(dtype))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int | None = None) -> "Int4Linear":
        w = linear.weight.detach()
        g = int4_group_size(w.shape[1], group_size)
        q, scale, zero = quantize_int4_groups(w, g)
        return cls(q, scale, zero, g, _bias(linear), w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _kernel_input(x)
        if self.on_cuda:  # tinygemm reads bf16 only
            bf16 = torch.bfloat16
            sz = self.scales_and_zeros.to(bf16)
            y = torch._weight_int4pack_mm(x2.to(bf16), self.weight, self.group_size, sz)
        else:
            sz = self.scales_and_zeros.to(x2.dtype)
            y = torch._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size, sz)
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def _pack_int4(q: torch.Tensor) -> torch.Tensor:
    if q.device.type == "cuda":
        k = q.shape[1]
        inner_k_tiles = next(t for t in (8, 4, 2) if k % (t * 16) == 0)
        as_bytes = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        return torch._convert_weight_to_int4pack(as_bytes, inner_k_tiles)
    return torch._convert_weight_to_int4pack_for_cpu(q, 1)


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, K] as e4m3 with a float32 scale per row: amax / 448, at least 1e-12."""
    x_scale = (x2.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    return to_fp8(x2 / x_scale), x_scale


def fp8_matmuls(device: torch.device) -> bool:
    """Whether `device` multiplies e4m3 (`_scaled_mm`): CUDA compute capability 8.9 or later."""
    return device.type == "cuda" and _capability(device) >= (8, 9)


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


class Fp8Linear(nn.Module):
    """float8 e4m3 weights [N, K] with a float32 scale per output channel (per-tensor scales
    are stored per channel too). Where the GPU multiplies e4m3 (Ada, Hopper) activations get a
    dynamic per-token scale and go through `_scaled_mm`; elsewhere (CPU, Ampere) the weight is
    widened per call (see `fp8_widen`): the memory saving stays, the product is 16-bit."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias):
        super().__init__()
        # Parameters, so a pre-quantized checkpoint's `weight` / `weight_scale` load by name.
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale = nn.Parameter(weight_scale, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def empty(cls, linear: nn.Linear) -> "Fp8Linear":
        """Storage for a checkpoint that is already fp8."""
        n, k = linear.weight.shape
        dev = linear.weight.device
        w = torch.empty(n, k, dtype=FP8, device=dev)
        return cls(w, torch.ones(n, device=dev), _bias(linear))

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Fp8Linear":
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
        return cls(to_fp8(w / scale[:, None]), scale, _bias(linear))

    # x2 [M, K] -> (e4m3 [M, K], float32 scales [M, 1]); a backend may swap in a fused kernel
    quantize = staticmethod(quantize_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fp8_matmuls(x.device):
            y = fp8_scaled_mm(x, self.weight, self.weight_scale, self.quantize)
        else:
            w, exp2 = fp8_widen(self.weight, x.dtype)
            y = F.linear(x, w) * (self.weight_scale * exp2).to(x.dtype)
        return y if self.bias is None else y + self.bias


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    # Saturate: a plain cast of a value past 448 is not guaranteed to clamp on every device.
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8)


def fp8_scaled_mm(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, quantize=quantize_rows):
    """x @ (w * w_scale)^T with x quantized to e4m3 per token (row-wise scales), as the
    published Llama 3 FP8 checkpoints expect. `_scaled_mm` wants the weight column-major."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, x_scale = quantize(x2)
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    y = torch._scaled_mm(
        xq, w.t(), scale_a=x_scale, scale_b=w_scale.float()[None, :], out_dtype=out_dtype
    )
    return y.to(x.dtype).view(*x.shape[:-1], w.shape[0])


# dtype -> (integer view, left shift, mask keeping sign + exponent/mantissa bits, log2 of the
# factor the bits come out too small by). e4m3's 7 exponent+mantissa bits dropped under a wider
# float's exponent field read as the same number times 2^-120 (bf16 / fp32) or 2^-8 (fp16),
# subnormals included: a shift and a mask instead of PyTorch's scalar fp8 conversion (measured
# 0.16 ms against 6 ms for a 2048x768 weight on this CPU).
_WIDEN = {
    torch.bfloat16: (torch.int16, 4, -30736, 120),  # mask 0x87F0
    torch.float16: (torch.int16, 7, -16512, 8),  # mask 0xBF80
    torch.float32: (torch.int32, 20, -2014314496, 120),  # mask 0x87F00000
}


def fp8_widen(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """e4m3 weights as `dtype`, too small by the returned factor (fold it into the scale)."""
    if dtype not in _WIDEN:
        return w.to(dtype), 1.0
    int_dtype, shift, mask, exp2 = _WIDEN[dtype]
    bits = w.view(torch.int8).to(int_dtype)  # sign-extends: the sign lands on the top bit
    bits.bitwise_left_shift_(shift).bitwise_and_(mask)
    return bits.view(dtype), float(2**exp2)


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


QUANTIZED_LINEARS = (Int8Linear, Int4Linear, Fp8Linear)


def quantize_model(model: nn.Module, method: str, group_size: int | None = None) -> int:
    """Swaps every nn.Linear inside the decoder layers (`model.model.layers`) for its quantized
    form, one at a time so the float copy of only one layer is alive. Returns how many."""
    count = 0
    for layer in model.model.layers:
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, _quantize(child, method, group_size))
                    count += 1
    return count


def _quantize(linear: nn.Linear, method: str, group_size: int | None) -> nn.Module:
    if method == "int8":
        return Int8Linear.from_float(linear)
    if method == "int4":
        return Int4Linear.from_float(linear, group_size)
    if method == "fp8":
        return Fp8Linear.from_float(linear)
    raise ValueError(f"unknown quantization {method!r}")


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of weights: `total`, and `quantized` for the swapped linears' storage."""
    seen: set[int] = set()
    total = quantized = 0
    for module in model.modules():
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        for t in tensors:
            key = id(t) if t.is_mkldnn else t.data_ptr()  # oneDNN's packed copies: no storage
            if key in seen:
                continue
            seen.add(key)
            n = t.numel() * t.element_size()
            total += n
            if isinstance(module, QUANTIZED_LINEARS):
                quantized += n
    return {"total": total, "quantized": quantized}
