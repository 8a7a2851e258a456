"""The Triton elementwise modules (herd.engine.triton_layer_ops, the CUDA versions) compute what
the torch modules they replace compute, run here under Triton's interpreter: RMSNorm with and
without the residual add, SiLU-and-mul, RoPE in place on a view of the fused QKV output, the fp8
linear's per-token quantisation; odd sizes take the masked tails; and a model with all of them
swapped in gives the eager model's logits. Rounding is checked in float16: the interpreter
truncates float32 to bfloat16 (a GPU rounds to nearest even), so bf16 is checked only to within
a few ulps. The kernels compile for sm_90 in test_triton_attention.py's compile test."""

import pytest
import torch
import torch.nn.functional as F

from herd.engine import triton_attention
from herd.engine.triton_layer_ops import (
    TritonFp8Linear,
    TritonRMSNorm,
    quantize_fp8,
    use_triton_layer_ops,
)
from herd.model.llama import RMSNorm
from herd.model.quant import FP8, Fp8Linear, quantize_rows
from tests.engine.conftest import assert_same
from tests.engine.layer_op_cases import (
    check_fallbacks,
    check_rms_norm,
    check_rope,
    check_silu_and_mul,
)

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not triton_attention.interpreting(), reason="TRITON_INTERPRET=1 only without CUDA"
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_rounded_alike(mine: torch.Tensor, ref: torch.Tensor) -> None:
    if mine.dtype != torch.bfloat16:
        return assert_same(mine, ref)
    assert mine.dtype == ref.dtype  # the interpreter truncates each rounding: a few ulps
    torch.testing.assert_close(mine, ref, atol=3e-2, rtol=2e-2)


def swapped(module):
    wrapper = torch.nn.Sequential(module)
    assert use_triton_layer_ops(wrapper) == 1
    return wrapper[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(16, 768), (3, 100)])
def test_rms_norm_with_and_without_residual(dtype, rows, hidden):
    exact = dtype != torch.bfloat16  # the interpreter truncates bf16 sums
    check_rms_norm(swapped, assert_rounded_alike, dtype, rows, hidden, exact_sum=exact)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(8, 2048), (5, 37)])
def test_silu_and_mul(dtype, rows, inter):
    check_silu_and_mul(swapped, assert_rounded_alike, dtype, rows, inter)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(12, 4, 64), (3, 1, 40)])
def test_rope_in_place_on_the_fused_projection(dtype, heads, kv_heads, head_dim):
    check_rope(swapped, assert_rounded_alike, dtype, heads, kv_heads, head_dim)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_quantisation_per_token(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 300, generator=g) * 5).to(dtype)
    x[1] = 0  # an all-zero row takes the least scale
    x[2, 7] = 1e4  # a row whose amax dwarfs the rest
    q, scale = quantize_fp8(x)
    ref_q, ref_scale = quantize_rows(x)
    assert q.dtype == FP8 and scale.shape == (6, 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=0)
    # Within one e4m3 step of torch's values: the interpreter's float32 -> e4m3 truncates
    # subnormals, rounds ties away from zero and drops the carry of a mantissa rounded up past
    # 111 (a GPU rounds to nearest even, as torch does; gpu_checks compares them exactly there)
    got, ref = q.float(), ref_q.float()
    assert (got * ref >= 0).all()
    assert ((ref - got).abs() <= torch.clamp(ref.abs() / 2, min=2**-9)).all()
    assert (got == ref).float().mean() > 0.9


def test_the_swap_covers_fp8_linears_and_keeps_their_weights():
    lin = torch.nn.Linear(32, 16, bias=False)
    fp8 = Fp8Linear.from_float(lin)
    weight = fp8.weight
    wrapper = torch.nn.Sequential(fp8, RMSNorm(16, 1e-6))
    assert use_triton_layer_ops(wrapper) == 2
    assert isinstance(wrapper[0], TritonFp8Linear) and isinstance(wrapper[1], TritonRMSNorm)
    assert wrapper[0].weight is weight and wrapper[0].quantize is quantize_fp8


def test_what_it_cannot_take_falls_back_to_torch():
    check_fallbacks(swapped)


def test_a_swapped_model_gives_the_eager_logits(model_dirs):
    from herd.model.config import ModelConfig
    from herd.model.loader import load_model

    d = model_dirs["gqa"]
    cfg = ModelConfig.from_path(d)
    # float16: the interpreter rounds it as a GPU does (bf16 it truncates)
    ref = load_model(d, cfg, torch.float16, torch.device("cpu"))
    mine = load_model(d, cfg, torch.float16, torch.device("cpu"))
    assert use_triton_layer_ops(mine) == 4 * cfg.num_hidden_layers + 1  # 2 norms, act, rope
    ids = torch.tensor([1, 5, 9, 2, 7, 3])
    pos = torch.arange(6)

    def attend(layer, q, k, v):  # causal self-attention over the 6 tokens, as one prefill
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
        )
        return out.transpose(0, 1)

    with torch.inference_mode():
        got = mine.compute_logits(mine(ids, pos, attend))
        want = ref.compute_logits(ref(ids, pos, attend))
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
