"""The fused C++ decode step (`herd.engine.cpu_decoder`): transformers' greedy tokens in float32 (GQA,
MHA, tied Llama 3 rope, biases), the eager engine's logprobs in bf16, the portable (no AVX-512)
build, batches past its limit, and the models it must leave to the other paths."""

import pytest
import torch

from herd.engine.cpu_decoder import CpuDecoder
from herd.engine.llm import LLM
from herd.engine.native_build import FLAGS, load_library
from herd.engine.sampling_params import SamplingParams
from tests.engine.conftest import MAX_TOKENS, PROMPTS, hf_greedy

pytestmark = pytest.mark.skipif(load_library("cpu_decoder.cpp") is None, reason="no C++ compiler")
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


def _spy(llm: LLM) -> list[int]:
    """Records the batch size of every step the fused decoder runs."""
    fused, sizes = llm.engine.runner.fused, []
    run = fused.run
    fused.run = lambda step, cache: sizes.append(step.num_rows) or run(step, cache)
    return sizes


def _greedy(llm: LLM, prompt_ids: list[list[int]]) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("name", ["gqa", "mha", "tied_llama3"])
def test_fused_steps_give_transformers_tokens(model_dirs, hf_reference, name):
    ids, expected = hf_reference[name]
    llm = LLM(model_dirs[name], num_kv_blocks=64, block_size=4)  # contexts span many blocks
    sizes = _spy(llm)
    assert _greedy(llm, ids) == expected
    assert max(sizes) == len(PROMPTS)  # every row of the batch in one fused step


def test_biases(tmp_path):
    from transformers import AutoModelForCausalLM

    from herd.engine.tokenizer import Tokenizer
    from herd.model.demo import write_demo_model

    d = write_demo_model(tmp_path, seed=3, attention_bias=True, mlp_bias=True)
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():  # transformers initialises biases to zero: make them count
        for n, p in hf.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.2)
    hf.save_pretrained(d, safe_serialization=True)
    ids = [Tokenizer(d).encode(p) for p in PROMPTS[:3]]
    llm = LLM(d, num_kv_blocks=64)
    sizes = _spy(llm)
    assert _greedy(llm, ids) == hf_greedy(d, ids, MAX_TOKENS)
    assert sizes


def _logprobs(llm: LLM, prompts: list[str] = PROMPTS) -> list[list[tuple[int, float]]]:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
    rows = []
    for out in llm.generate(prompts, params):
        c = out.outputs[0]
        rows.append([(t, lp[t].logprob) for t, lp in zip(c.token_ids, c.logprobs, strict=True)])
    return rows


def test_bf16_matches_the_eager_engine(model_dirs):
    kw = dict(dtype="bfloat16", num_kv_blocks=64, block_size=4)
    fused, eager = (
        LLM(model_dirs["gqa"], **kw),
        LLM(model_dirs["gqa"], fused_decode_max_batch=0, **kw),
    )
    assert fused.engine.runner.fused is not None and eager.engine.runner.fused is None
    got, want = _logprobs(fused), _logprobs(eager)
    for g, w in zip(got, want, strict=True):
        assert [t for t, _ in g] == [t for t, _ in w]
        assert [lp for _, lp in g] == pytest.approx([lp for _, lp in w], abs=2e-2)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """Sizes no kernel tile divides: K = 72 and 101 (masked tails of 32-wide dots, an odd input
    count for the packed pairs), odd spans of gate/up and vocab rows per thread (the two-row
    tiles leave one row over), output counts no 32-wide packed block divides."""
    from herd.model.demo import write_demo_model

    torch.manual_seed(0)
    return write_demo_model(
        tmp_path_factory.mktemp("odd"), hidden_size=72, intermediate_size=101, head_dim=18,
        vocab_size=515,
    )  # fmt: skip


@pytest.mark.parametrize("rows", [13, 25])
@pytest.mark.parametrize("name", ["gqa", "odd"])
def test_bf16_batches_of_13_and_25_match_the_eager_engine(model_dirs, odd_model, name, rows):
    """13 rows: packed tiles of 7 and 6 batch rows (without AVX512-BF16, a full 8-row bf16 tile
    and a 5-row remainder); 25: three packed groups of 9 and 8. On the demo model and on one of
    odd sizes (partial output blocks, an odd K)."""
    prompts = [f"{p} ({i})" for i in range(5) for p in PROMPTS][:rows]
    kw = dict(dtype="bfloat16", num_kv_blocks=256, block_size=4, fused_decode_max_batch=32)
    model = odd_model if name == "odd" else model_dirs[name]
    fused, eager = (
        LLM(model, **kw),
        LLM(model, **kw | {"fused_decode_max_batch": 0}),
    )
    sizes = _spy(fused)
    got, want = _logprobs(fused, prompts), _logprobs(eager, prompts)
    assert max(sizes) == rows
    for g, w in zip(got, want, strict=True):
        assert [t for t, _ in g] == [t for t, _ in w]
        assert [lp for _, lp in g] == pytest.approx([lp for _, lp in w], abs=2e-2)


def test_portable_build_gives_the_same_tokens(model_dirs, hf_reference):
    """The build for CPUs without AVX-512 (the loops the compiler vectorises itself)."""
    flags = [f for f in FLAGS if f != "-mprefer-vector-width=512"]
    lib = load_library("cpu_decoder.cpp", [f.replace("native", "x86-64-v2") for f in flags])
    if lib is None:
        pytest.skip("not an x86-64 compiler")
    ids, expected = hf_reference["gqa"]
    llm = LLM(model_dirs["gqa"], num_kv_blocks=64, prepack_weights=False)  # plain weight rows
    runner = llm.engine.runner
    runner.fused = CpuDecoder(runner.model, runner.kv_cache, 16, lib)
    sizes = _spy(llm)
    assert _greedy(llm, ids) == expected and sizes


def test_batches_past_the_limit_take_the_other_path(model_dirs, hf_reference):
    ids, expected = hf_reference["gqa"]
    llm = LLM(model_dirs["gqa"], num_kv_blocks=64, fused_decode_max_batch=2)
    sizes = _spy(llm)
    assert _greedy(llm, ids) == expected
    assert sizes == []  # five rows: op by op
    assert _greedy(llm, ids[:1]) == expected[:1]
    assert set(sizes) == {1}


@pytest.mark.parametrize(
    "settings",
    [
        dict(fused_decode_max_batch=0),
        dict(attention_backend="torch"),  # the reference backend, chosen by name
        dict(quantization="int8"),
        dict(kv_cache_dtype="fp8"),
    ],
)
def test_models_it_does_not_take(model_dirs, settings):
    llm = LLM(model_dirs["gqa"], num_kv_blocks=64, **settings)
    assert llm.engine.runner.fused is None
    assert llm.generate(PROMPTS[:2], GREEDY)[0].outputs[0].token_ids


def test_bad_setting_is_refused(model_dirs):
    with pytest.raises(ValueError, match="fused_decode_max_batch"):
        LLM(model_dirs["gqa"], fused_decode_max_batch=-1)
