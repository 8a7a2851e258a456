"""`PackedLinear` computes what the `nn.Linear` it replaces computes, and the engine gives the same
bf16 logprobs with weights prepacked or not."""

import pytest
import torch
from torch import nn

from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.model.packed_linear import PackedLinear, available, pack_linears
from herd.model.quant import weight_bytes

pytestmark = pytest.mark.skipif(not available(), reason="oneDNN's bf16 linear does not run here")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lead", [(5,), (1,), (2, 3)])
def test_same_outputs_as_the_plain_linear(bias, lead):
    torch.manual_seed(0)
    plain = nn.Linear(96, 80, bias=bias).to(torch.bfloat16)
    packed = PackedLinear(plain)
    x = torch.randn(*lead, 96, dtype=torch.bfloat16)
    torch.testing.assert_close(packed(x), plain(x), atol=0, rtol=0)
    assert packed.weight is plain.weight  # one parameter: the plain copy stays for its readers


def test_only_plain_bf16_linears_are_swapped():
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16), nn.Linear(8, 8), nn.ReLU())
    tied = nn.Linear(8, 8, bias=False).to(torch.bfloat16)
    model.append(tied)
    emb = nn.Embedding(8, 8).to(torch.bfloat16)
    tied.weight = emb.weight
    assert pack_linears(model) == 2
    assert [type(m) for m in model] == [PackedLinear, nn.Linear, nn.ReLU, PackedLinear]
    assert model[3].weight is emb.weight  # tied weights stay tied


def test_weight_bytes_counts_the_packed_copy():
    """oneDNN's packed copy has no storage (no data_ptr): counted once, as its own bytes."""
    model = nn.Sequential(nn.Linear(64, 32, bias=False).to(torch.bfloat16))
    plain = weight_bytes(model)["total"]
    pack_linears(model)
    assert weight_bytes(model)["total"] == 2 * plain  # the plain weight and the packed one


def test_engine_logprobs_do_not_change(tmp_path, monkeypatch):
    """oneDNN prepacking is what the runner does where herd's block kernel cannot run (no
    AVX512-BF16): made so here by taking that kernel away."""
    from herd.model.demo import write_demo_model

    monkeypatch.setattr("herd.engine.runner.pack_blocks", lambda *args: 0)
    model_dir = write_demo_model(tmp_path, tie_word_embeddings=True)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    kw = dict(dtype="bfloat16", num_kv_blocks=64, fused_decode_max_batch=0)
    outs = []
    for prepack in (True, False):
        llm = LLM(model_dir, prepack_weights=prepack, **kw)
        swapped = any(isinstance(m, PackedLinear) for m in llm.engine.runner.model.modules())
        assert swapped == prepack
        got = llm.generate(["Hello there", "Numbers: 0 1 2 3"], params)
        outs.append([_pairs(o.outputs[0]) for o in got])
    # Same tokens; logprobs equal here, but on CPUs without AVX512-BF16 oneDNN picks other
    # kernels for plain and prepacked weights at some row counts (1e-4 apart, emulated Skylake)
    for packed, plain in zip(*outs, strict=True):
        assert [t for t, _ in packed] == [t for t, _ in plain]
        assert [lp for _, lp in packed] == pytest.approx([lp for _, lp in plain], abs=1e-3)


def test_a_cpu_whose_onednn_cannot_pack_bf16_serves_plain_weights(tmp_path, monkeypatch):
    """On an AVX2-only CPU oneDNN refuses to pack a bf16 weight (it needs AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT): `available()` says no, and where herd's blocks cannot run either (no
    compiler) a bf16 engine starts on plain weights."""
    from herd.model import packed_linear
    from herd.model.demo import write_demo_model

    def refuse(*args):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support ...")

    monkeypatch.setattr("herd.engine.runner.pack_blocks", lambda *args: 0)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    packed_linear.available.cache_clear()
    try:
        assert not packed_linear.available()
        llm = LLM(write_demo_model(tmp_path), dtype="bfloat16", num_kv_blocks=64)
        model = llm.engine.runner.model
        assert not any(isinstance(m, PackedLinear) for m in model.modules())
        params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        assert len(llm.generate(["Hello there"], params)[0].outputs[0].token_ids) == 4
    finally:
        monkeypatch.undo()
        packed_linear.available.cache_clear()
    assert packed_linear.available()


def _pairs(completion) -> list[tuple[int, float]]:
    tokens, logprobs = completion.token_ids, completion.logprobs
    return [(t, d[t].logprob) for t, d in zip(tokens, logprobs, strict=True)]
