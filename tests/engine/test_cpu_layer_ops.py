"""The native elementwise modules (herd.engine.cpu_layer_ops) compute what the torch modules they
replace compute: RMSNorm with and without the residual add, SiLU-and-mul, RoPE in place on a
view of the fused QKV output; odd sizes take the masked tails; what they cannot take falls back;
and a model with them swapped in still compiles."""

import pytest
import torch

from herd.engine.cpu_layer_ops import (
    NativeRMSNorm,
    NativeRotary,
    NativeSiluAndMul,
    use_native_layer_ops,
)
from herd.engine.native_build import load_library
from herd.model.llama import RMSNorm, SiluAndMul
from tests.engine.conftest import assert_same
from tests.engine.layer_op_cases import (
    check_fallbacks,
    check_rms_norm,
    check_rope,
    check_silu_and_mul,
)

pytestmark = pytest.mark.skipif(
    load_library("cpu_layer_ops.cpp") is None, reason="no C++ compiler here"
)
DTYPES = [torch.float32, torch.bfloat16]


def swapped(module):
    wrapper = torch.nn.Sequential(module)
    assert use_native_layer_ops(wrapper) == 1
    return wrapper[0]


def exact_bf16(mine: torch.Tensor, ref: torch.Tensor) -> None:
    """RoPE: each product rounded as eager rounds it, so bf16 is exact."""
    if mine.dtype == torch.bfloat16:
        torch.testing.assert_close(mine, ref, atol=0, rtol=0)
    else:
        assert_same(mine, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(64, 768), (3, 100), (1, 8)])
def test_rms_norm_with_and_without_residual(dtype, rows, hidden):
    check_rms_norm(swapped, assert_same, dtype, rows, hidden)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(64, 2048), (5, 37)])
def test_silu_and_mul(dtype, rows, inter):
    check_silu_and_mul(swapped, assert_same, dtype, rows, inter)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(12, 4, 64), (3, 1, 40), (2, 2, 128)])
def test_rope_in_place_on_the_fused_projection(dtype, heads, kv_heads, head_dim):
    check_rope(swapped, exact_bf16, dtype, heads, kv_heads, head_dim)


def test_what_it_cannot_take_falls_back_to_torch():
    check_fallbacks(swapped)
    assert isinstance(swapped(RMSNorm(16, 1e-6)), NativeRMSNorm)


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
