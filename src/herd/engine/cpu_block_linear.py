"""`BlockLinear`: a bf16 or float32 linear on CPUs that keeps its weight only packed in blocks of
32 outputs (`cpu_linear.h`'s layout) and multiplies through `cpu_block_linear.cpp` for any number
of rows; the fused decode step reads the same blocks. One copy of the weights, where oneDNN
prepacking kept two and the fused step a third. `pack_blocks` swaps them into a model, as
quantization swaps in its linears."""

import ctypes

import torch
from torch import nn

from herd.engine.huge_pages import collapse, huge_buffer
from herd.engine.native_build import load_library
from herd.model.packed_linear import BATCH_HINT, cpu_linears, onednn_linear

PACK_COLS = 32  # outputs per block, as cpu_linear.h packs them
SYMBOLS = {torch.bfloat16: "herd_block_linear_bf16", torch.float32: "herd_block_linear_f32"}
_P, _I = ctypes.c_void_p, ctypes.c_int64


def load_kernel(dtype: torch.dtype = torch.bfloat16) -> ctypes.CDLL | None:
    """The kernel library for `dtype` weights, or None where it cannot run: no compiler,
    `HERD_CPU_KERNELS=0`, a failed build, or a CPU with neither AVX-512 nor AVX2 (the library
    then lacks the symbols)."""
    lib = load_library("cpu_block_linear.cpp") if dtype in SYMBOLS else None
    return lib if lib is not None and hasattr(lib, SYMBOLS[dtype]) else None


def packed_bytes(n: int, k: int, dtype: torch.dtype) -> int:
    """Bytes of an [n, k] weight packed: whole blocks of 32 outputs by 32-bit input units (a bf16
    input pair, or one float32 input), zero-padded."""
    per_unit = 4 // dtype.itemsize
    return -(-n // PACK_COLS) * -(-k // per_unit) * PACK_COLS * 4


def pack(w: torch.Tensor) -> torch.Tensor:
    """An [N, K] weight as blocks: ceil(N/32) blocks, each holding for every input unit (bf16:
    inputs 2k, 2k+1; float32: input k) its 32 outputs' weights, zero-padded:
    [N/32, units, 32, elements per unit]."""
    n, k = w.shape
    per_unit = 4 // w.element_size()
    blocks, units = -(-n // PACK_COLS), -(-k // per_unit)
    padded = torch.zeros(blocks * PACK_COLS, units * per_unit, dtype=w.dtype)
    padded[:n, :k] = w
    return padded.view(blocks, PACK_COLS, units, per_unit).transpose(1, 2)


class BlockLinear(nn.Module):
    """Computes what the `nn.Linear` it replaces computes, to accumulation order (products
    summed in float32, bias added, rounded once to the dtype), from `blocks`: the plain weight
    is not kept. Each of `segments` (output counts; a fused gate_up's gate and up) is packed
    apart from a block boundary, so a segment is whole blocks that the fused decode step can
    hand out per thread. Rows may be any number; inputs must have the weight's dtype. With
    `onednn_above` a bf16 one also keeps oneDNN's prepacked copy and runs more rows than that
    through it (AMX CPUs, where oneDNN's tile kernels outrun any AVX-512 loop on prefill-sized
    products)."""

    def __init__(
        self,
        linear: nn.Linear,
        blocks: torch.Tensor,
        segments: tuple[int, ...],
        onednn_above: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype
        assert sum(segments) == self.out_features
        self.segments, self.lib = segments, load_kernel(self.dtype)
        self.bias = linear.bias
        self.register_buffer("blocks", blocks, persistent=False)
        if self.dtype != torch.bfloat16:
            onednn_above = None
        self.onednn_above, onednn = onednn_above, None
        if onednn_above is not None:
            onednn = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.register_buffer("onednn", onednn, persistent=False)
        w, start = linear.weight.detach(), 0
        for i, n in enumerate(segments):
            packed = pack(w[start : start + n])
            self.segment(i).view(packed.shape).copy_(packed)
            start += n

    def segment(self, i: int) -> torch.Tensor:
        """Segment i's blocks (a view of `blocks`, in the weight's dtype)."""
        k, dt = self.in_features, self.dtype
        off = sum(packed_bytes(n, k, dt) for n in self.segments[:i])
        return self.blocks[off : off + packed_bytes(self.segments[i], k, dt)].view(dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            raise TypeError(f"this BlockLinear takes {self.dtype} inputs, got {x.dtype}")
        if torch.compiler.is_compiling():
            return torch.ops.herd.block_linear(x, self.blocks, self.bias, list(self.segments))
        if self.onednn is not None and x.numel() > self.onednn_above * self.in_features:
            return onednn_linear(x, self.onednn, self.bias)
        return _block_linear(self.lib, x, self.blocks, self.bias, self.segments)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks of 32"


def _block_linear(lib, x, blocks, bias, segments) -> torch.Tensor:
    k, n, size = x.shape[-1], sum(segments), x.element_size()
    rows = x.reshape(-1, k).contiguous()
    out = torch.empty(rows.shape[0], n, dtype=x.dtype)
    threads, wp, col = ctypes.c_int(torch.get_num_threads()), blocks.data_ptr(), 0
    fn = getattr(lib, SYMBOLS[x.dtype])
    for width in segments:
        b = None if bias is None else bias.data_ptr() + size * col
        fn(_P(rows.data_ptr()), _I(rows.shape[0]), _I(k), _P(wp), _I(width), _P(b),
           _P(out.data_ptr() + size * col), _I(n), threads)  # fmt: skip
        wp, col = wp + packed_bytes(width, k, x.dtype), col + width
    return out.view(*x.shape[:-1], n)


@torch.library.custom_op("herd::block_linear", mutates_args=())
def _block_linear_op(
    x: torch.Tensor, blocks: torch.Tensor, bias: torch.Tensor | None, segments: list[int]
) -> torch.Tensor:
    """The same product as an op torch.compile can trace (eager calls skip its dispatch cost)."""
    return _block_linear(load_kernel(x.dtype), x, blocks, bias, segments)


@_block_linear_op.register_fake
def _(x, blocks, bias, segments):
    return x.new_empty(*x.shape[:-1], sum(segments))


def _segments(name: str, linear: nn.Linear) -> tuple[int, ...]:
    n = linear.out_features  # gate and up apart: each a whole number of blocks for the fused step
    return (n // 2, n // 2) if name == "gate_up_proj" and n % 2 == 0 else (n,)


def pack_blocks(model: nn.Module, onednn_above: int | None = None) -> int:
    """Swap every bf16 and float32 CPU `nn.Linear` of `model` whose dtype the kernel runs here
    for a `BlockLinear` (passing `onednn_above`), all in one buffer on huge pages (the decode
    step streams them), freeing each plain weight as it goes unless another module shares it
    (tied embeddings); returns how many (0 where the kernel cannot run)."""
    swaps = [s for dt in SYMBOLS if load_kernel(dt) is not None for s in cpu_linears(model, dt)]
    sizes = [
        sum(packed_bytes(n, c.in_features, c.weight.dtype) for n in _segments(name, c))
        for _, name, c in swaps
    ]
    buffer, off = huge_buffer(sum(sizes)), 0
    for (parent, name, child), size in zip(swaps, sizes, strict=True):
        blocks = buffer[off : off + size]
        setattr(parent, name, BlockLinear(child, blocks, _segments(name, child), onednn_above))
        off += size
    if swaps:
        collapse(buffer)
    return len(swaps)
