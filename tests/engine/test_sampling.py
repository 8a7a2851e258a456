"""Sampling: seeded reproducibility, the softmax distribution, support restrictions, penalties."""

import math

import pytest
import torch

from herd import LLM, SamplingParams
from herd.engine.request import Request
from herd.engine.sampler import Sampler


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, dtype="float32", block_size=4)


def req(params: SamplingParams, seed=None, prompt=(1, 2, 3)) -> Request:
    return Request("r", "r", 0, list(prompt), params, seed, 16)


def draw(logits: torch.Tensor, params: SamplingParams, n: int) -> list[int]:
    sampler = Sampler(eos_token_ids=[], seed=123)
    reqs = [req(params) for _ in range(n)]
    return sampler(logits.repeat(n, 1), reqs).token_ids


def test_temperature_sampling_matches_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    temperature = 0.7
    n = 20000
    counts = torch.bincount(
        torch.tensor(draw(logits, SamplingParams(temperature=temperature), n)), minlength=5
    )
    expected = torch.softmax(logits[0] / temperature, -1) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47, (counts, expected)  # chi-square, 4 dof, p = 0.001


def test_top_k_top_p_min_p_restrict_support():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]))
    assert set(draw(logits, SamplingParams(top_k=2), 2000)) == {0, 1}
    # top_p=0.8: 0.4 + 0.3 = 0.7 < 0.8, so the third token completes the nucleus.
    assert set(draw(logits, SamplingParams(top_p=0.8), 2000)) == {0, 1, 2}
    # min_p=0.3: keep tokens with p >= 0.3 * 0.4 = 0.12.
    assert set(draw(logits, SamplingParams(min_p=0.3), 2000)) == {0, 1, 2}
    assert set(draw(logits, SamplingParams(temperature=0), 50)) == {0}


def test_penalties_push_away_from_generated_tokens():
    logits = torch.tensor([[3.0, 2.9, 0.0, 0.0]])
    r = req(SamplingParams(temperature=0, frequency_penalty=1.0), prompt=(2,))
    r.all_token_ids.append(0)  # token 0 was already generated once
    assert Sampler([], 0)(logits, [r]).token_ids == [1]
    r = req(SamplingParams(temperature=0, repetition_penalty=2.0), prompt=(0,))
    assert Sampler([], 0)(logits, [r]).token_ids == [1]  # 3.0 / 2 < 2.9


def test_logprobs_are_of_the_raw_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    out = Sampler([], 0)(logits, [req(SamplingParams(temperature=0, logprobs=2))])
    expected = torch.log_softmax(logits[0], -1)
    assert out.logprobs[0] == pytest.approx({2: float(expected[2]), 1: float(expected[1])})
    assert math.isclose(out.sampled_logprobs[0], float(expected[2]), rel_tol=1e-6)


def test_seeded_request_is_independent_of_the_batch(llm):
    params = SamplingParams(temperature=1.0, seed=42, max_tokens=10, ignore_eos=True)
    alone = llm.generate(["Tell me a story"], params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=7, ignore_eos=True)
    batch = llm.generate(
        ["Hello world, how are you", "Tell me a story", "café"], [others, params, others]
    )
    assert batch[1].outputs[0].token_ids == alone
    again = llm.generate(["Tell me a story"], params)[0].outputs[0].token_ids
    assert again == alone
    different = llm.generate(
        ["Tell me a story"],
        SamplingParams(temperature=1.0, seed=43, max_tokens=10, ignore_eos=True),
    )
    assert different[0].outputs[0].token_ids != alone


def test_seeded_request_resumes_on_its_first_k_tokens(llm):
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    prompt = llm.get_tokenizer().encode("Tell me a story")
    full = llm.generate([{"prompt_token_ids": prompt}], params)[0].outputs[0].token_ids
    rest = SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)
    resumed = llm.generate([{"prompt_token_ids": prompt + full[:4]}], rest)[0].outputs[0].token_ids
    assert resumed == full[4:]


def test_seeded_request_survives_preemption(tiny_model_dir):
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True)
    prompts = [f"prompt number {i} about the quick brown fox" for i in range(6)]
    roomy = LLM(tiny_model_dir, dtype="float32", block_size=4)
    tight = LLM(tiny_model_dir, dtype="float32", block_size=4, num_kv_blocks=12)
    a = [o.outputs[0].token_ids for o in roomy.generate(prompts, params)]
    b = [o.outputs[0].token_ids for o in tight.generate(prompts, params)]
    assert a == b and tight.stats()["preemptions"] > 0


def test_n_completions(llm):
    out = llm.generate(
        ["Hello"], SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=8, ignore_eos=True)
    )[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    single = llm.generate(
        ["Hello"], SamplingParams(temperature=1.0, seed=1, max_tokens=8, ignore_eos=True)
    )[0]
    assert single.outputs[0].token_ids == out.outputs[0].token_ids
    greedy = llm.generate(
        ["Hello"], SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True)
    )[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids


def test_siblings_share_the_prompt_blocks(tiny_model_dir):
    from herd.engine.config import EngineConfig
    from herd.engine.llm_engine import LLMEngine

    engine = LLMEngine(
        EngineConfig(model=str(tiny_model_dir), block_size=4, enable_prefix_caching=False)
    )
    prompt = list(range(1, 22))  # 5 full blocks + 1 token
    engine.add_request(
        "x", prompt, SamplingParams(n=4, temperature=1.0, max_tokens=3, ignore_eos=True)
    )
    engine.step()  # prefill of the first sibling
    engine.step()  # the others join, sharing its full blocks
    first_block = engine.kv.blocks_of("x#0")[0]
    assert first_block.ref_cnt == 4
    assert all(engine.kv.blocks_of(f"x#{i}")[0] is first_block for i in range(4))
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks


def test_siblings_are_right_when_the_first_finishes_before_they_start(tiny_model_dir):
    # max_num_seqs=1: sibling 0 finishes (max_tokens=1) before the others are admitted, so the
    # blocks they share must outlive it.
    llm = LLM(tiny_model_dir, dtype="float32", block_size=2, max_num_seqs=1)
    params = SamplingParams(n=3, temperature=0, max_tokens=1, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": list(range(10, 19))}], params)[0]
    single = llm.generate(
        [{"prompt_token_ids": list(range(10, 19))}], SamplingParams(temperature=0, max_tokens=1)
    )[0]
    assert [c.token_ids for c in out.outputs] == [single.outputs[0].token_ids] * 3


def test_device_noise_is_exponential_and_keyed_by_seed_and_position():
    from herd.engine.sampler import exponential_noise, noise_keys

    keys = noise_keys(torch.tensor([7, 7, 8]), torch.tensor([3, 3, 3]))
    assert keys[0] == keys[1] != keys[2]
    noise = exponential_noise(keys, 50_000)
    assert torch.equal(noise[0], noise[1])
    # Against the exponential CDF (1 - e^-x): Kolmogorov-Smirnov distance of one row.
    x = noise[2].double().sort().values
    n = x.numel()
    cdf = 1 - torch.exp(-x)
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max()
    assert ks < 1.95 / n**0.5  # p = 0.001
