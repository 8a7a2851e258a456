"""Randomised equivalence: whatever the block size, budget, max_num_seqs, pool size and prefix
caching, outputs (greedy and seeded) equal a roomy engine's, and every block comes back."""

import random

import pytest

from herd import LLM, SamplingParams


def random_case(rng: random.Random) -> tuple[list[list[int]], list[SamplingParams], dict]:
    base = [rng.randrange(1, 500) for _ in range(rng.randint(1, 60))]
    prompts = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.5:  # shares a prefix with the others
            head = base[: rng.randint(1, len(base))]
            prompts.append(head + [rng.randrange(1, 500) for _ in range(rng.randint(0, 20))])
        else:
            prompts.append([rng.randrange(1, 500) for _ in range(rng.randint(1, 50))])
    params = [
        SamplingParams(
            n=rng.choice([1, 1, 2, 3]),
            temperature=rng.choice([0, 0.8]),
            seed=rng.randrange(100),
            max_tokens=rng.randint(1, 20),
            ignore_eos=True,
        )
        for _ in prompts
    ]
    kw = dict(
        block_size=rng.choice([1, 2, 4, 16]),
        max_num_batched_tokens=rng.choice([3, 7, 16, 64, 2048]),
        max_num_seqs=rng.choice([1, 2, 5, 64]),
        enable_prefix_caching=rng.random() < 0.7,
    )
    need = max(
        -(-(len(p) + sp.max_tokens) // kw["block_size"])
        for p, sp in zip(prompts, params, strict=True)
    )
    kw["num_kv_blocks"] = rng.choice([need + 1, need * 2, 4096])
    return prompts, params, kw


@pytest.mark.parametrize("seed", range(6))
def test_random_settings_give_the_roomy_engines_outputs(tiny_model_dir, seed):
    prompts, params, kw = random_case(random.Random(seed))
    batch = [{"prompt_token_ids": p} for p in prompts]
    roomy = LLM(tiny_model_dir, dtype="float32", num_kv_blocks=4096)
    llm = LLM(tiny_model_dir, dtype="float32", **kw)
    expected = [[c.token_ids for c in o.outputs] for o in roomy.generate(batch, params)]
    assert [[c.token_ids for c in o.outputs] for o in llm.generate(batch, params)] == expected
    pool = llm.engine.kv.pool
    assert pool.num_free_blocks == pool.num_blocks and not llm.engine.parents
