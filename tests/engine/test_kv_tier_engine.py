"""KV tiers in the engine: blocks evicted from a too-small pool go to host memory or a disk file
and come back as prefix hits, with transformers' greedy tokens; a later turn of a conversation
finds its history there; bad tier settings are refused by name."""

import os

import pytest

from herd import LLM, SamplingParams
from herd.engine.config import EngineConfig, SchedulerConfig
from herd.engine.llm_engine import LLMEngine
from tests.engine.conftest import MAX_TOKENS

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
BLOCK = 4


def block_bytes(llm: LLM) -> int:
    return llm.engine.runner.kv_bytes_per_block()


def generate(llm: LLM, prompts: list[list[int]], params=GREEDY) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize(
    "tiers",
    [
        dict(kv_offload_bytes=200_000),
        # a host tier of 3 blocks over a disk tier: blocks go down a tier and come back from it
        dict(kv_offload_bytes=3 * 2048, kv_disk_bytes=400_000, kv_disk_path="DISK"),
    ],
    ids=["host", "host+disk"],
)
def test_tiny_pool_with_tiers_keeps_transformers_tokens(model_dirs, hf_reference, tiers, tmp_path):
    prompt_ids, expected = hf_reference["gqa"]
    if "kv_disk_path" in tiers:
        tiers["kv_disk_path"] = str(tmp_path)
    # 20 blocks of 4 tokens hold about two requests: preemption and eviction on every round.
    llm = LLM(
        model_dirs["gqa"],
        dtype="float32",
        block_size=BLOCK,
        num_kv_blocks=20,
        kv_swap_policy="swap",
        **tiers,
    )
    assert block_bytes(llm) == 2048  # the sizes above are in these blocks
    for order in (prompt_ids, prompt_ids[::-1]):
        assert generate(llm, order) == [expected[prompt_ids.index(p)] for p in order]
    stats = llm.stats()
    assert stats["preemptions"] > 0
    tier_hits = {
        t: stats["kv_tiers"][t]["hits"] for t in ("host", "disk") if t in stats["kv_tiers"]
    }
    assert all(h > 0 for h in tier_hits.values()), tier_hits
    assert stats["kv_tiers"]["restored_blocks"] == sum(tier_hits.values())


def conversation(llm: LLM, turn1: list[int], other: list[list[int]]) -> tuple[list, list, int]:
    """Turn 1, other traffic that pushes its blocks out of the pool, then turn 2 on top of turn
    1's prompt and answer; returns both answers and turn 2's cached prompt tokens."""
    answer1 = generate(llm, [turn1])[0]
    generate(llm, other)
    turn2 = turn1 + answer1 + [7, 8, 9, 10, 11]
    out = llm.generate([{"prompt_token_ids": turn2}], GREEDY)[0]
    return answer1, out.outputs[0].token_ids, out.num_cached_tokens


def test_second_turn_finds_its_history_in_the_tier(tiny_model_dir):
    turn1 = list(range(20, 60))  # 40 tokens: 10 blocks
    other = [list(range(100 + 40 * i, 140 + 40 * i)) for i in range(4)]
    kw = dict(dtype="float32", block_size=BLOCK, num_kv_blocks=24, max_num_seqs=1)
    cold = conversation(LLM(tiny_model_dir, **kw), turn1, other)
    llm = LLM(tiny_model_dir, kv_offload_bytes=64 * 2048, kv_swap_policy="swap", **kw)
    warm = conversation(llm, turn1, other)
    assert warm[:2] == cold[:2]  # same answers in both turns
    assert cold[2] == 0  # without tiers the pool had lost turn 1
    # Turn 1's KV: its prompt and every answer token but the last (sampled, never fed back).
    history = len(turn1) + MAX_TOKENS - 1
    assert warm[2] == history // BLOCK * BLOCK  # every full block of it came back
    assert llm.stats()["kv_tiers"]["host"]["hits"] == history // BLOCK


def test_recompute_policy_leaves_tier_hits_and_keeps_tokens(tiny_model_dir):
    turn1 = list(range(20, 60))
    other = [list(range(100 + 40 * i, 140 + 40 * i)) for i in range(4)]
    kw = dict(dtype="float32", block_size=BLOCK, num_kv_blocks=24, max_num_seqs=1)
    cold = conversation(LLM(tiny_model_dir, **kw), turn1, other)
    llm = LLM(tiny_model_dir, kv_offload_bytes=64 * 2048, kv_swap_policy="recompute", **kw)
    assert conversation(llm, turn1, other) == cold
    stats = llm.stats()["kv_tiers"]
    assert stats["host"]["hits"] == 0 and stats["recomputed_blocks"] > 0


def test_disk_tier_is_a_file_of_the_configured_size(tiny_model_dir, tmp_path):
    disk = tmp_path / "kv"
    engine = LLMEngine(
        EngineConfig(
            model=str(tiny_model_dir),
            dtype="float32",
            block_size=BLOCK,
            num_kv_blocks=8,
            kv_disk_path=str(disk),
            kv_disk_bytes=10 * 2048 + 100,  # ten blocks and a remainder no block fits in
        )
    )
    files = list(disk.iterdir())
    assert len(files) == 1 and os.path.getsize(files[0]) == 10 * 2048
    assert engine.stats()["kv_tiers"]["disk"]["total_blocks"] == 10
    del engine


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(kv_disk_bytes=1 << 20), "kv_disk_bytes needs kv_disk_path"),
        (dict(kv_disk_path="/tmp/x"), "kv_disk_path needs kv_disk_bytes"),
        (dict(kv_offload_bytes=-1), "kv_offload_bytes must be >= 0"),
        (dict(kv_offload_bytes=1 << 20, enable_prefix_caching=False), "enable_prefix_caching"),
        (dict(kv_swap_policy="sometimes"), "kv_swap_policy must be one of"),
    ],
)
def test_bad_tier_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="m", **settings)


def test_tier_smaller_than_a_block_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="kv_offload_bytes 100 holds no KV block"):
        LLMEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", kv_offload_bytes=100))


def test_blocks_of_a_step_that_never_ran_are_not_kept(tiny_model_dir):
    """A running request preempted for a higher class after the scheduler gave it (and cached)
    this step's blocks never computes them: neither the pool nor a tier may hand them back."""

    def run(**tiers) -> tuple[list[int], int]:
        engine = LLMEngine(
            EngineConfig(
                model=str(tiny_model_dir),
                dtype="float32",
                block_size=BLOCK,
                num_kv_blocks=16,
                kv_swap_policy="swap",
                scheduler=SchedulerConfig(max_num_batched_tokens=8),
                **tiers,
            )
        )
        long_decode = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
        engine.add_request("a", [1, 2, 3], long_decode, priority=0)
        engine.add_request("r", list(range(100, 140)), GREEDY, priority=10)
        tokens: dict[str, list[int]] = {}
        for step in range(1000):
            if step == 2:  # r is mid-prompt: h (outranking it) preempts it in the next schedule
                engine.add_request("h", list(range(200, 236)), GREEDY, priority=5)
            for out in engine.step():
                tokens.setdefault(out.request_id, []).extend(out.outputs[0].token_ids)
            if not engine.has_unfinished_requests():
                break
        hits = engine.stats()["kv_tiers"].get("host", {}).get("hits", 0)
        return tokens["r"], hits

    plain, _ = run()
    tiered, hits = run(kv_offload_bytes=100 * 2048)
    assert hits > 0  # r's computed blocks did come back from the tier
    assert tiered == plain
