"""`BlockLinear` (bf16 weights packed in blocks, `cpu_block_linear.cpp`) against float32 products
of the same bf16 weights: row counts below, at and past a tile and a panel, input counts odd and
even, output counts no block divides, biases, gate/up segments; traced by torch.compile; and in
a model: one copy of each weight (the plain one freed, tied embeddings kept), the fused step
reading the same blocks; on an AMX CPU (its flag faked) oneDNN's copy kept for large products;
and the builds for CPUs without bf16 dot products (AVX2; AVX-512 without BF16): bf16 and float32
blocks, products and tokens."""

import copy

import pytest
import torch
from torch import nn

from herd.engine import cpu_block_linear, native_build
from herd.engine.cpu_block_linear import BlockLinear, pack_blocks
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.model import packed_linear
from herd.model.packed_linear import PackedLinear
from tests.engine.conftest import MAX_TOKENS, PROMPTS

NO_BF16 = cpu_block_linear.load_kernel(torch.bfloat16) is None
SKYLAKE = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}  # what skylake-avx512 uses
NO_F32 = cpu_block_linear.load_kernel(torch.float32) is None
pytestmark = pytest.mark.skipif(NO_F32, reason="no C++ compiler, or neither AVX2 nor AVX-512")
needs_bf16 = pytest.mark.skipif(NO_BF16, reason="neither AVX-512 nor AVX2")


class Pair(nn.Module):
    """A gate_up projection (packed as two segments) and a plain one, as a layer holds them."""

    def __init__(self, k: int, n: int, bias: bool, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(k, n, bias=bias, dtype=dtype)
        self.o_proj = nn.Linear(k, n, bias=bias, dtype=dtype)


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, marks=needs_bf16), torch.float32])
@pytest.mark.parametrize("k,n,bias", [(7, 6, False), (33, 70, True), (64, 96, True), (101, 514, False), (576, 320, True)])  # fmt: skip
def test_products_match_float32_of_the_same_weights(k, n, bias, dtype):
    torch.manual_seed(k)
    model = Pair(k, n, bias, dtype)
    ref = {name: (m.weight.detach().float(), m.bias) for name, m in model.named_children()}
    assert pack_blocks(model) == 2
    assert model.gate_up_proj.segments == (n // 2, n // 2) and model.o_proj.segments == (n,)
    # bf16: float32 sums rounded once, within bf16's half-ulp; float32: summation order only
    rtol, atol = (2**-8, 1e-3) if dtype == torch.bfloat16 else (1e-5, 1e-5)
    for rows in (1, 2, 11, 12, 23, 88, 89, 300):
        x = torch.randn(3, rows, k, dtype=dtype)  # leading dims kept
        for name, m in model.named_children():
            w, b = ref[name]
            want = x.double() @ w.double().T + (b.detach().double() if b is not None else 0)
            got = m(x)
            assert got.dtype == dtype and got.shape == (3, rows, n)
            assert torch.allclose(got.double(), want, rtol=rtol, atol=atol * want.abs().max())


@needs_bf16
def test_wrong_dtype_is_refused():
    model = Pair(16, 32, False)
    pack_blocks(model)
    with pytest.raises(TypeError, match="takes torch.bfloat16 inputs"):
        model.o_proj(torch.randn(2, 16))


@needs_bf16
def test_torch_compile_traces_it():
    model = Pair(40, 64, True)
    pack_blocks(model)
    x = torch.randn(5, 40, dtype=torch.bfloat16)
    with torch.inference_mode():
        compiled = torch.compile(lambda t: model.gate_up_proj(t) + 1, fullgraph=True)
        assert torch.equal(compiled(x), model.gate_up_proj(x) + 1)


def test_float32_models_run_on_blocks_too(model_dirs):
    """Float32 demo models: every linear a float32 BlockLinear, the fused step on the blocks."""
    runner = LLM(model_dirs["gqa"], num_kv_blocks=64).engine.runner
    assert runner.dtype == torch.float32 and runner.fused.model.lm_head_p
    assert not any(isinstance(m, nn.Linear) for m in runner.model.modules())


@needs_bf16
def test_a_model_keeps_one_copy_and_its_tokens(model_dirs):
    kw = dict(dtype="bfloat16", num_kv_blocks=64, block_size=4)
    blocks = LLM(model_dirs["tied_llama3"], **kw)
    plain = LLM(model_dirs["tied_llama3"], prepack_weights=False, **kw)
    model = blocks.engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, BlockLinear)]
    assert len(linears) == 4 * model.config.num_hidden_layers + 1
    assert all(not hasattr(m, "weight") for m in linears)  # the plain weights are gone
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # tied: the lookup keeps it
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert blocks.engine.runner.fused is not None and blocks.engine.runner.fused.model.lm_head_p
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in blocks.generate(PROMPTS, params)]
    want = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, params)]
    assert got == want


@needs_bf16
@pytest.mark.skipif(not packed_linear.available(), reason="no oneDNN in this torch build")
def test_onednn_above_sends_more_rows_to_onednn():
    """AMX CPUs keep oneDNN's copy as well and run products of more rows than `onednn_above`
    through it: those equal oneDNN's own, fewer rows still take the blocks."""
    torch.manual_seed(1)
    model = Pair(64, 96, True)
    onednn = PackedLinear(copy.deepcopy(model.o_proj))
    w = model.o_proj.weight.detach().float()
    pack_blocks(model, onednn_above=8)
    with torch.inference_mode():
        many, few = (
            torch.randn(9, 64, dtype=torch.bfloat16),
            torch.randn(8, 64, dtype=torch.bfloat16),
        )
        assert torch.equal(model.o_proj(many), onednn(many))
        want = few.float() @ w.T + model.o_proj.bias.float()
        assert torch.allclose(model.o_proj(few).float(), want, rtol=2**-8, atol=1e-3)


@needs_bf16
def test_an_amx_cpu_keeps_onednn_for_large_products_and_32_row_fused_steps(model_dirs, monkeypatch):
    monkeypatch.setattr(
        "herd.engine.runner.cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"})
    )
    llm = LLM(model_dirs["gqa"], dtype="bfloat16", num_kv_blocks=64)
    runner = llm.engine.runner
    linears = [m for m in runner.model.modules() if isinstance(m, BlockLinear)]
    assert runner.amx == packed_linear.available()
    assert all((m.onednn is not None) == runner.amx for m in linears)
    assert runner.fused.max_batch == (32 if runner.amx else 128)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    plain = LLM(model_dirs["gqa"], dtype="bfloat16", num_kv_blocks=64, prepack_weights=False)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS * 8, params)]  # 40-row prefills
    assert got == [o.outputs[0].token_ids for o in plain.generate(PROMPTS * 8, params)]


@pytest.mark.parametrize("march", ["x86-64-v3", "skylake-avx512"])
def test_older_cpus_builds_pack_both_dtypes_and_give_the_reference_tokens(
    model_dirs, hf_reference, monkeypatch, march
):
    """Every kernel built as for a CPU without bf16 dot products (HERD_CPU_MARCH): AVX2 without
    AVX-512, and AVX-512 without AVX512-BF16 (Skylake-SP to Ice Lake). bf16 (pairs widened) and
    float32 linears on their tiles, the fused step on the same blocks; float32 gives
    transformers' greedy tokens, bf16 those of torch's own bf16 linears."""
    if march == "skylake-avx512" and not SKYLAKE <= native_build.cpu_flags():
        pytest.skip("this CPU cannot run AVX-512 code")
    monkeypatch.setenv("HERD_CPU_MARCH", march)
    libs = {dt: cpu_block_linear.load_kernel(dt) for dt in (torch.float32, torch.bfloat16)}
    if libs[torch.float32] is None:
        pytest.skip("not an x86-64 compiler")
    assert libs[torch.bfloat16] is libs[torch.float32]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2**-8)):
        torch.manual_seed(0)
        model = Pair(101, 514, True, dtype)  # odd K, a partial block and a partial half
        w, b = model.o_proj.weight.detach().double(), model.o_proj.bias.detach().double()
        pack_blocks(model)
        assert model.o_proj.lib is libs[dtype]
        for rows in (1, 2, 3, 6, 7, 13, 49, 300):  # one-pass tiles (1-2 rows), halves past
            x = torch.randn(rows, 101, dtype=dtype)
            want, got = x.double() @ w.T + b, model.o_proj(x)
            assert got.dtype == dtype
            assert torch.allclose(got.double(), want, rtol=tol, atol=tol * want.abs().max())
    ids, expected = hf_reference["gqa"]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    prompts = [{"prompt_token_ids": i} for i in ids]
    for dtype in ("float32", "bfloat16"):
        llm = LLM(model_dirs["gqa"], dtype=dtype, num_kv_blocks=64, block_size=4)
        runner = llm.engine.runner
        assert runner.fused.model.lm_head_p and runner.fused.max_batch == 128  # every batch
        assert all(
            m.lib is libs[torch.float32]
            for m in runner.model.modules()
            if isinstance(m, BlockLinear)
        )
        if dtype == "bfloat16":
            plain = LLM(model_dirs["gqa"], dtype=dtype, num_kv_blocks=64, prepack_weights=False)
            expected = [o.outputs[0].token_ids for o in plain.generate(prompts, params)]
        outs = llm.generate(prompts, params)
        assert [o.outputs[0].token_ids for o in outs] == expected
