"""triton_layer_ops' Triton kernels: `add_rmsnorm`, `silu_and_mul`, `rope` (in place) and
`quantize_fp8`. triton_layer_ops imports this module on first use (it imports Triton).
"""

import triton
import triton.language as tl


@triton.jit
def add_rmsnorm(x_ptr, res_ptr, w_ptr, out_ptr, h, eps, HAS_RESIDUAL: tl.constexpr,
                BLOCK: tl.constexpr):  # fmt: skip
    """Row r: s = x + residual (rounded, written back), out = w * round(s / rms(s))."""
    row = tl.program_id(0).to(tl.int64) * h
    c = tl.arange(0, BLOCK)
    mask = c < h
    x = tl.load(x_ptr + row + c, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(res_ptr + row + c, mask=mask, other=0.0)).to(x.dtype)
        tl.store(res_ptr + row + c, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / h + eps)
    normed = (xf * inv).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row + c, (w * normed).to(x.dtype), mask=mask)


@triton.jit
def silu_and_mul(gate_up, out_ptr, n, BLOCK: tl.constexpr):
    """Row r, columns of block b: round(round(silu(gate)) * up)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < n
    g = tl.load(gate_up + row * 2 * n + c, mask=mask, other=0.0)
    u = tl.load(gate_up + row * 2 * n + n + c, mask=mask, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    s = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
    tl.store(out_ptr + row * n + c, (s * u).to(g.dtype), mask=mask)


@triton.jit
def rope(x_ptr, cos_ptr, sin_ptr, stride_t, heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
         BLOCK_HALF: tl.constexpr):  # fmt: skip
    """Token t, every head: (x1, x2) -> (x1 cos1 - x2 sin1, x2 cos2 + x1 sin2), each product
    and the sum rounded, as x * cos + rotate_half(x) * sin in the activation dtype."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    c = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < heads) & (c < HALF)
    at = x_ptr + t * stride_t + h * 2 * HALF + c
    x1 = tl.load(at, mask=mask, other=0.0)
    x2 = tl.load(at + HALF, mask=mask, other=0.0)
    dt = x1.dtype
    cs, sn = cos_ptr + t * 2 * HALF + c, sin_ptr + t * 2 * HALF + c
    cos1 = tl.load(cs, mask=c < HALF, other=0.0).to(tl.float32)
    cos2 = tl.load(cs + HALF, mask=c < HALF, other=0.0).to(tl.float32)
    sin1 = tl.load(sn, mask=c < HALF, other=0.0).to(tl.float32)
    sin2 = tl.load(sn + HALF, mask=c < HALF, other=0.0).to(tl.float32)
    f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
    a = (f1 * cos1).to(dt).to(tl.float32) + (-f2 * sin1).to(dt).to(tl.float32)
    b = (f2 * cos2).to(dt).to(tl.float32) + (f1 * sin2).to(dt).to(tl.float32)
    tl.store(at, a.to(dt), mask=mask)
    tl.store(at + HALF, b.to(dt), mask=mask)


@triton.jit
def quantize_fp8(x_ptr, q_ptr, scale_ptr, k, fp8_max, BLOCK: tl.constexpr):
    """Row r: scale = max(amax |x| / fp8_max, 1e-12), q = e4m3(clamp(x / scale))."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    mask = c < k
    x = tl.load(x_ptr + row * k + c, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 0) / fp8_max, 1e-12)
    q = tl.clamp(tl.math.div_rn(x, scale), -fp8_max, fp8_max)
    tl.store(q_ptr + row * k + c, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)
