"""logit_bias in the sampler: the same greedy tokens as transformers with the same bias, only the
requests that ask are biased, and token ids outside the vocabulary are refused, not a crash."""

import pytest
import torch

from herd import LLM, SamplingParams
from herd.engine.errors import InvalidRequestError

PROMPTS = ["The quick brown fox", "Numbers: 0 1 2 3"]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir), dtype="float32", device="cpu")


def greedy(**kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, **kw)


def hf_biased_greedy(model_dir, prompt_ids, bias: dict[int, float]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for ids in prompt_ids:
        gen = model.generate(
            torch.tensor([ids]),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            sequence_bias={(t,): b for t, b in bias.items()},
            eos_token_id=None,
            pad_token_id=0,
        )
        outs.append(gen[0, len(ids) :].tolist())
    return outs


def test_biased_greedy_equals_transformers(llm, tiny_model_dir):
    prompt_ids = [llm.engine.tokenizer.encode(p) for p in PROMPTS]
    plain = [o.outputs[0].token_ids for o in llm.generate(prompt_ids, greedy())]
    # Push the first greedy token of each prompt down, and two other tokens up by a margin
    # comparable to the logits' spread, so the bias changes the path without fixing it.
    bias = {plain[0][0]: -4.0, plain[1][0]: -4.0, 17: 3.0, 300: 2.5}
    ours = [o.outputs[0].token_ids for o in llm.generate(prompt_ids, greedy(logit_bias=bias))]
    assert ours == hf_biased_greedy(tiny_model_dir, prompt_ids, bias)
    assert ours != plain


def test_only_biased_requests_change_in_a_mixed_batch(llm):
    solo = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy())]
    params = [greedy(logit_bias={7: 100}), greedy()]
    mixed = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert mixed[0] == [7] * MAX_TOKENS  # a bias of 100 forces the token
    assert mixed[1] == solo[1]


def test_a_bias_of_minus_100_bans_a_token(llm):
    plain = llm.generate(PROMPTS[0], greedy())[0].outputs[0].token_ids
    banned = set(plain)
    out = llm.generate(PROMPTS[0], greedy(logit_bias={t: -100 for t in banned}))
    assert not banned & set(out[0].outputs[0].token_ids)


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"logit_bias": {512: 1.0}}, "logit_bias"),  # the demo vocabulary is 512
        ({"stop_token_ids": [10**6], "min_tokens": 2}, "stop_token_ids"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused(llm, kw, param):
    with pytest.raises(InvalidRequestError) as info:
        llm.generate("x", greedy(**kw))
    assert info.value.param == param and "vocabulary" in info.value.message
    assert llm.generate("x", greedy())[0].outputs[0].token_ids  # the engine still serves


@pytest.mark.parametrize("bias", [{-1: 1.0}, {3: 100.5}, {3: -101}])
def test_bad_bias_values_are_refused(bias):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(logit_bias=bias)
    assert info.value.param == "logit_bias"
