"""Compiled decode steps (`herd.engine.compiled`) give the eager engine's greedy tokens, and
padding a batch up to its bucket changes nothing for the real rows."""

import json

import pytest

from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams, StructuredOutputsParams
from tests.engine.conftest import PROMPTS

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def _tokens(llm: LLM, prompts: list[str]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]


@pytest.fixture(scope="module")
def engines(model_dirs):
    d = model_dirs["gqa"]
    # the fused C++ step off: it would take every batch the graphs do (tests/engine/test_cpu_decoder.py)
    off = dict(num_kv_blocks=64, fused_decode_max_batch=0)
    compiled = LLM(d, enforce_eager=False, compile_max_batch=4, **off)
    eager = LLM(d, enforce_eager=True, **off)
    return compiled, eager


def test_compiled_matches_eager_in_a_padded_batch(engines, monkeypatch):
    compiled, eager = engines
    graphs = compiled.engine.runner.graphs
    assert graphs.compiled == {1, 2, 4}  # built with the LLM, before any request
    sizes = []  # the batch of every step the compiled path ran
    run = graphs.run
    monkeypatch.setattr(
        graphs, "run", lambda step, cache: sizes.append(len(step.input_ids)) or run(step, cache)
    )
    prompts = PROMPTS[:3]  # three rows: padded to bucket 4
    assert _tokens(compiled, prompts) == _tokens(eager, prompts)
    assert 4 in sizes  # the compiled path really ran, padded


def test_padding_does_not_change_a_row(engines):
    compiled, eager = engines
    alone = _tokens(compiled, PROMPTS[1:2])  # bucket 1, no padding
    padded = _tokens(compiled, PROMPTS[1:4])  # bucket 4, one padding row
    assert alone[0] == padded[0] == _tokens(eager, PROMPTS[1:2])[0]
    assert 1 in compiled.engine.runner.graphs.compiled


def test_batches_past_the_largest_bucket_run_eagerly(engines):
    compiled, eager = engines
    prompts = PROMPTS[:5]  # five rows: more than compile_max_batch
    assert _tokens(compiled, prompts) == _tokens(eager, prompts)
    assert set(compiled.engine.runner.graphs.compiled) <= {1, 2, 4}


def test_compiled_decode_steps_keep_structured_outputs(engines):
    compiled, eager = engines
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}},
              "required": ["a"], "additionalProperties": False}  # fmt: skip
    params = SamplingParams(
        max_tokens=60, seed=3, structured_outputs=StructuredOutputsParams(json=schema)
    )
    got = compiled.generate(PROMPTS[:3], params)
    assert [o.outputs[0].text for o in got] == [
        o.outputs[0].text for o in eager.generate(PROMPTS[:3], params)
    ]
    for out in got:  # the grammar held on the compiled path: every answer is valid and ended
        assert out.outputs[0].finish_reason == "stop"
        assert set(json.loads(out.outputs[0].text)) == {"a"}


def test_bf16_with_prepacked_weights_compiles(model_dirs):
    """bf16 linears are packed (BlockLinear, a custom op to inductor; or oneDNN's PackedLinear)
    and the layers' residual adds follow them: inductor must still build every bucket (its
    linear + add fusion once asserted on PackedLinear)."""
    from herd.engine.cpu_block_linear import BlockLinear, load_kernel
    from herd.model.packed_linear import PackedLinear, available

    if load_kernel() is None and not available():
        pytest.skip("neither herd's block kernel nor oneDNN in this build")
    llm = LLM(
        model_dirs["gqa"], dtype="bfloat16", enforce_eager=False, compile_max_batch=2,
        fused_decode_max_batch=0, num_kv_blocks=64,
    )  # fmt: skip
    runner = llm.engine.runner
    assert any(isinstance(m, (PackedLinear, BlockLinear)) for m in runner.model.modules())
    assert runner.graphs.compiled == {1, 2} and not runner.graphs.failed
    assert len(_tokens(llm, PROMPTS[:2])[1]) == GREEDY.max_tokens
