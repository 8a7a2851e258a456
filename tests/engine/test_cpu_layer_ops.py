"""The native elementwise modules (herd.engine.cpu_layer_ops) compute what the torch modules they
replace compute: RMSNorm with and without the residual add, SiLU-and-mul, RoPE in place on a
view of the fused QKV output; odd sizes take the masked tails; what they cannot take falls back;
and a model with them swapped in still compiles."""

import pytest
import torch
import torch.nn.functional as F

from herd.engine.cpu_layer_ops import (
    NativeRMSNorm,
    NativeRotary,
    NativeSiluAndMul,
    use_native_layer_ops,
)
from herd.engine.native_build import load_library
from herd.model.config import RopeConfig
from herd.model.llama import RMSNorm, SiluAndMul
from herd.model.rope import Rotary, RotaryEmbedding, apply_rotary
from tests.engine.conftest import assert_same

pytestmark = pytest.mark.skipif(
    load_library("cpu_layer_ops.cpp") is None, reason="no C++ compiler here"
)
DTYPES = [torch.float32, torch.bfloat16]


def swapped(module):
    wrapper = torch.nn.Sequential(module)
    assert use_native_layer_ops(wrapper) == 1
    return wrapper[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(64, 768), (3, 100), (1, 8)])
def test_rms_norm_with_and_without_residual(dtype, rows, hidden):
    g = torch.Generator().manual_seed(rows + hidden)
    norm = RMSNorm(hidden, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden, generator=g))
    native = swapped(RMSNorm(hidden, 1e-5).to(dtype))
    native.load_state_dict(norm.state_dict())
    x = torch.randn(rows, hidden, generator=g).to(dtype) * 3
    residual = torch.randn(rows, hidden, generator=g).to(dtype)
    assert_same(native(x), norm(x))

    ref_out, ref_residual = norm(x, residual.clone())
    mine = residual.clone()
    out, new_residual = native(x, mine)
    assert new_residual is mine  # updated in place: the caller handed it over
    torch.testing.assert_close(new_residual, ref_residual, atol=0, rtol=0)
    assert_same(out, ref_out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(64, 2048), (5, 37)])
def test_silu_and_mul(dtype, rows, inter):
    g = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(rows, 2 * inter, generator=g) * 4).to(dtype)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # exp's ends
    ref = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
    assert_same(swapped(SiluAndMul())(gate_up), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(12, 4, 64), (3, 1, 40), (2, 2, 128)])
def test_rope_in_place_on_the_fused_projection(dtype, heads, kv_heads, head_dim):
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
    if dtype == torch.bfloat16:  # each product rounded as eager rounds it: exact
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
    else:
        assert_same(out, ref)
    torch.testing.assert_close(qkv[:, qk_size:], before_v, atol=0, rtol=0)


def test_what_it_cannot_take_falls_back_to_torch():
    x = torch.randn(6, 16, dtype=torch.float64)  # no float64 kernels
    norm = swapped(RMSNorm(16, 1e-6).to(torch.float64))
    torch.testing.assert_close(norm(x), RMSNorm(16, 1e-6).to(torch.float64)(x))
    gate_up = torch.randn(16, 6).t()  # not contiguous
    ref = F.silu(gate_up[:, :8]) * gate_up[:, 8:]
    torch.testing.assert_close(swapped(SiluAndMul())(gate_up), ref)
    assert isinstance(norm, NativeRMSNorm)
    qk = torch.randn(3, 2, 8)
    one_row = RotaryEmbedding(RopeConfig(), 8, 16)(torch.tensor([5]), torch.float32)  # broadcast
    ref = apply_rotary(qk.clone(), one_row)
    torch.testing.assert_close(swapped(Rotary())(qk, one_row), ref)


def test_a_swapped_model_still_compiles():
    model = torch.nn.Sequential(RMSNorm(32, 1e-5), torch.nn.Linear(32, 64), SiluAndMul())
    assert use_native_layer_ops(model) == 2
    assert isinstance(model[0], NativeRMSNorm) and isinstance(model[2], NativeSiluAndMul)
    x = torch.randn(4, 32)
    compiled = torch.compile(model, fullgraph=True)  # a ctypes call would break the graph
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_the_engine_swaps_them_in(tmp_path):
    from herd.engine.llm import LLM
    from herd.model.demo import write_demo_model

    llm = LLM(str(write_demo_model(tmp_path)), dtype="bfloat16", num_kv_blocks=16)
    layer = llm.engine.runner.model.model.layers[0]
    assert isinstance(layer.input_layernorm, NativeRMSNorm)
    assert isinstance(layer.self_attn.rotary, NativeRotary)
    assert isinstance(layer.mlp.act_fn, NativeSiluAndMul)
