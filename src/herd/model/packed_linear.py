"""`PackedLinear`: a bf16 `nn.Linear` on CPU whose matmuls read a copy of the weight prepacked in
oneDNN's blocked layout, a module swap as `herd.model.quant` swaps in quantized linears. A plain
`F.linear` repacks the weight inside oneDNN on every call; prepacked, a ~100M model's matmuls ran
8-25% faster at 64 rows and 30-55% at 16 (benchmarks/RESULTS.md), with identical outputs. The
plain weight stays (tied embeddings and the fused C++ decode step read it): the linear weights'
memory doubles, which `prepack_weights=False` avoids."""

import functools
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

BATCH_HINT = 64  # the row count oneDNN chooses its blocking for (any count runs)


@functools.cache
def available() -> bool:
    """Whether oneDNN's prepacked bf16 linear runs here: the torch build has the ops, and the CPU
    what oneDNN's bf16 path needs (AVX-512 BW/VL/DQ or AVX-NE-CONVERT: on an AVX2-only CPU
    packing a bf16 weight raises, which took a bf16 replica down at start-up)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    ):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(
            torch.zeros(32, 32, dtype=torch.bfloat16), BATCH_HINT
        )
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Linear):
    """Computes exactly what the `nn.Linear` it replaces computes (same weight, same bias, same
    outputs), through oneDNN with the weight packed once at construction."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.register_buffer("packed", packed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Inductor's freezing packs the plain weight itself; handed our packed copy, its
            # linear + add fusion asserts (torch 2.13) and the whole bucket fell back to eager.
            return super().forward(x)
        return onednn_linear(x, self.packed, self.bias)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ w.T + bias through oneDNN, w as `mkldnn._reorder_linear_weight` packed it."""
    rows = x.reshape(-1, x.shape[-1])
    bias = None if bias is None else bias.detach()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


def cpu_linears(model: nn.Module, dtype: torch.dtype) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every plain CPU `nn.Linear` of `model` whose weight (and bias) is `dtype`, as (parent,
    attribute name, linear): what the CPU's packed linears (these, and herd.engine.
    cpu_block_linear's) swap out."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.dtype == dtype
        and (child.bias is None or child.bias.dtype == dtype)
        and child.weight.device.type == "cpu"
    ]


def pack_linears(model: nn.Module) -> int:
    """Swap every plain bf16 CPU `nn.Linear` of `model` for a `PackedLinear`; returns how many."""
    swaps = cpu_linears(model, torch.bfloat16)
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
