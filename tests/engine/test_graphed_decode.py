"""`GraphedDecode`'s static-buffer decode step (what a CUDA graph captures: full-width block
tables, padded buckets, fixed input addresses), run here without graphs: the eager engine's
greedy tokens, padded or not, with either attention backend; start-up dummy steps write only the
scratch block. The capture itself needs CUDA and is checked by benchmarks/gpu_suite.py."""

import pytest
import torch

from herd.engine.cuda_graphs import GraphedDecode
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from tests.engine.conftest import PROMPTS


def _static(model_dir, backend: str) -> LLM:
    llm = LLM(model_dir, enforce_eager=True, attention_backend=backend, num_kv_blocks=48)
    r = llm.engine.runner
    r.graphs = GraphedDecode(r.model, r.backend, [1, 2, 4], r.inputs, capture=False)
    return llm


# eager flex is slow on CPU (scores over the whole cache): one padded batch, few tokens
@pytest.mark.parametrize(
    "backend,batches,tokens",
    [("torch", (PROMPTS[:1], PROMPTS[:3], PROMPTS[:5]), 8), ("flex", (PROMPTS[:3],), 3)],
)
def test_static_decode_gives_the_eager_tokens(model_dirs, backend, batches, tokens):
    d = model_dirs["gqa"]
    static = _static(d, backend)
    eager = LLM(d, enforce_eager=True, attention_backend=backend, num_kv_blocks=48)
    greedy = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    for prompts in batches:  # bucket 1, padded to 4, past the largest bucket
        got = [o.outputs[0].token_ids for o in static.generate(prompts, greedy)]
        assert got == [o.outputs[0].token_ids for o in eager.generate(prompts, greedy)]
    assert 4 in static.engine.runner.graphs.captured


def test_start_up_steps_write_only_the_scratch_block(model_dirs):
    llm = _static(model_dirs["gqa"], "torch")
    r = llm.engine.runner
    r.kv_cache.normal_()
    before = r.kv_cache.clone()
    r.graphs.compile_all(r.kv_cache)
    assert r.graphs.captured == {1, 2, 4}
    assert torch.equal(r.kv_cache[:, :, :-1], before[:, :, :-1])
    assert not torch.equal(r.kv_cache[:, :, -1], before[:, :, -1])
