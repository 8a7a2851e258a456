"""What a swapped-in elementwise module (cpu_layer_ops' native ones, triton_layer_ops' Triton
ones) must compute: the torch module's result on the same input. Each check takes `swapped`
(module -> its swapped version) and `alike(mine, ref)`, the test's rounding verdict."""

import torch
import torch.nn.functional as F

from herd.model.config import RopeConfig
from herd.model.llama import RMSNorm, SiluAndMul
from herd.model.rope import Rotary, RotaryEmbedding, apply_rotary


def check_rms_norm(swapped, alike, dtype, rows: int, hidden: int, exact_sum: bool = True) -> None:
    """With and without the residual add; the residual is updated in place (exactly: one
    rounding of x + residual, unless `exact_sum` is off)."""
    g = torch.Generator().manual_seed(rows + hidden)
    norm = RMSNorm(hidden, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden, generator=g))
    mine = swapped(RMSNorm(hidden, 1e-5).to(dtype))
    mine.load_state_dict(norm.state_dict())
    x = torch.randn(rows, hidden, generator=g).to(dtype) * 3
    residual = torch.randn(rows, hidden, generator=g).to(dtype)
    alike(mine(x), norm(x))
    ref_out, ref_residual = norm(x, residual.clone())
    handed = residual.clone()
    out, new_residual = mine(x, handed)
    assert new_residual is handed  # updated in place: the caller handed it over
    if exact_sum:
        torch.testing.assert_close(new_residual, ref_residual, atol=0, rtol=0)
    else:
        alike(new_residual, ref_residual)
    alike(out, ref_out)


def check_silu_and_mul(swapped, alike, dtype, rows: int, inter: int) -> None:
    g = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(rows, 2 * inter, generator=g) * 4).to(dtype)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # exp's ends
    alike(swapped(SiluAndMul())(gate_up), F.silu(gate_up[:, :inter]) * gate_up[:, inter:])


def check_rope(swapped, alike, dtype, heads: int, kv_heads: int, head_dim: int) -> None:
    """In place on the q/k view of a fused QKV output; v untouched."""
    g = torch.Generator().manual_seed(head_dim)
    t = 9
    rope = RotaryEmbedding(RopeConfig(theta=10000.0), head_dim, 64)
    cos_sin = rope(torch.randint(0, 64, (t,), generator=g), dtype)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype)
    qk_size = (heads + kv_heads) * head_dim
    ref = apply_rotary(qkv[:, :qk_size].view(t, -1, head_dim), cos_sin)
    before_v = qkv[:, qk_size:].clone()
    qk = qkv[:, :qk_size].view(t, -1, head_dim)
    out = swapped(Rotary())(qk, cos_sin)
    assert out.data_ptr() == qk.data_ptr()  # rotated in place
    alike(out, ref)
    torch.testing.assert_close(qkv[:, qk_size:], before_v, atol=0, rtol=0)


def check_fallbacks(swapped) -> None:
    """float64, a non-contiguous input and a broadcast cos/sin row go to the torch versions."""
    x = torch.randn(6, 16, dtype=torch.float64)  # no float64 kernels
    norm = swapped(RMSNorm(16, 1e-6).to(torch.float64))
    torch.testing.assert_close(norm(x), RMSNorm(16, 1e-6).to(torch.float64)(x))
    gate_up = torch.randn(16, 6).t()  # not contiguous
    ref = F.silu(gate_up[:, :8]) * gate_up[:, 8:]
    torch.testing.assert_close(swapped(SiluAndMul())(gate_up), ref)
    qk = torch.randn(3, 2, 8)
    one_row = RotaryEmbedding(RopeConfig(), 8, 16)(torch.tensor([5]), torch.float32)  # broadcast
    ref = apply_rotary(qk.clone(), one_row)
    torch.testing.assert_close(swapped(Rotary())(qk, one_row), ref)
