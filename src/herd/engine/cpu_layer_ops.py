"""Native versions of the eager model's elementwise modules on CPU (cpu_layer_ops.cpp): residual
add + RMSNorm, RoPE in place, and SiLU-and-mul, one native call each instead of 4-9 torch ops.
`use_native_layer_ops` swaps them into a loaded model, as `pack_linears` swaps its linears."""

import ctypes
import logging

import torch
from torch import nn

from herd.engine.native_build import load_library
from herd.model.llama import RMSNorm, SiluAndMul
from herd.model.rope import Rotary, in_place_layout

log = logging.getLogger(__name__)

SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
_ptr = ctypes.c_void_p


def _native(x: torch.Tensor) -> bool:
    """Whether this call can go native: a CPU tensor of a supported dtype, outside a traced
    graph (inductor compiles the torch version; a foreign call would break the graph)."""
    return x.device.type == "cpu" and x.dtype in SUFFIX and not torch.compiler.is_compiling()


class NativeRMSNorm(RMSNorm):
    """RMSNorm, and the residual add before it, in one native pass; the residual is updated in
    place (the caller hands it over). Same rounding as RMSNorm; statistics summed in another
    order (float32 ulps)."""

    lib: ctypes.CDLL

    def forward(self, x, residual=None):
        if not (_native(x) and self.flat_operands(x, residual)):
            return super().forward(x, residual)
        out = torch.empty_like(x)
        h = x.shape[-1]
        getattr(self.lib, f"herd_add_rmsnorm_{SUFFIX[x.dtype]}")(
            _ptr(residual.data_ptr() if residual is not None else None), _ptr(x.data_ptr()),
            _ptr(self.weight.data_ptr()), ctypes.c_int64(x.numel() // h), ctypes.c_int64(h),
            ctypes.c_float(self.eps), _ptr(out.data_ptr()), ctypes.c_int(torch.get_num_threads()),
        )  # fmt: skip
        return out if residual is None else (out, residual)


class NativeSiluAndMul(SiluAndMul):
    """silu(gate) * up in one native pass, rounded as the torch version rounds."""

    lib: ctypes.CDLL

    def forward(self, gate_up):
        if not (_native(gate_up) and gate_up.is_contiguous()):
            return super().forward(gate_up)
        n = gate_up.shape[-1] // 2
        out = gate_up.new_empty((*gate_up.shape[:-1], n))
        getattr(self.lib, f"herd_silu_and_mul_{SUFFIX[gate_up.dtype]}")(
            _ptr(gate_up.data_ptr()), ctypes.c_int64(gate_up.numel() // (2 * n)),
            ctypes.c_int64(n), _ptr(out.data_ptr()), ctypes.c_int(torch.get_num_threads()),
        )  # fmt: skip
        return out


class NativeRotary(Rotary):
    """RoPE rotated in place: x [T, H, D] may be a view into the fused QKV output (heads
    contiguous, any row stride); cos/sin [T, 1, D] in x's dtype, as RotaryEmbedding gives them."""

    lib: ctypes.CDLL

    def forward(self, x, cos_sin):
        cos, sin = cos_sin
        if not (_native(x) and in_place_layout(x, cos, sin)):
            return super().forward(x, cos_sin)
        t, heads, d = x.shape
        getattr(self.lib, f"herd_rope_{SUFFIX[x.dtype]}")(
            _ptr(x.data_ptr()), ctypes.c_int64(x.stride(0)), ctypes.c_int64(t),
            ctypes.c_int64(heads), ctypes.c_int64(d), _ptr(cos.data_ptr()), _ptr(sin.data_ptr()),
            ctypes.c_int(torch.get_num_threads()),
        )  # fmt: skip
        return x


SWAPS = {RMSNorm: NativeRMSNorm, SiluAndMul: NativeSiluAndMul, Rotary: NativeRotary}


def use_native_layer_ops(model: nn.Module) -> int:
    """Swaps every RMSNorm, SiluAndMul and Rotary in `model` for its native version (weights
    kept, not copied); returns how many, 0 when the library cannot be built here."""
    lib = load_library("cpu_layer_ops.cpp")
    if lib is None:
        return 0
    swapped = 0
    for module in model.modules():
        native = SWAPS.get(type(module))
        if native is not None:
            module.__class__ = native  # same state (weight, eps), native forward
            module.lib = lib
            swapped += 1
    return swapped
