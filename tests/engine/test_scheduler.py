"""Scheduling order: priority then arrival; preempted requests keep their place."""

import pytest

from herd import LLM
from herd.engine.config import EngineConfig, SchedulerConfig
from herd.engine.llm_engine import LLMEngine
from herd.engine.sampling_params import SamplingParams


def finish_order(engine: LLMEngine) -> list[str]:
    order = []
    while engine.has_unfinished_requests():
        order += [o.request_id for o in engine.step() if o.finished]
    return order


def make_engine(model_dir, **sched) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=str(model_dir), dtype="float32", block_size=4, scheduler=SchedulerConfig(**sched)
        )
    )


def test_lower_priority_value_runs_first_then_arrival(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_num_seqs=1)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    engine.add_request("late-low", [1, 2, 3], params, priority=5)
    engine.add_request("urgent-1", [4, 5, 6], params, priority=0)
    engine.add_request("urgent-2", [7, 8, 9], params, priority=0)
    engine.add_request("normal", [1, 1, 1], params, priority=1)
    assert finish_order(engine) == ["urgent-1", "urgent-2", "normal", "late-low"]


def test_preempted_request_keeps_its_place(tiny_model_dir):
    engine = LLMEngine(
        EngineConfig(model=str(tiny_model_dir), dtype="float32", block_size=2, num_kv_blocks=14)
    )
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    for name in ("first", "second"):
        engine.add_request(name, list(range(10, 19)), params)
    for _ in range(3):
        engine.step()
    engine.add_request("newcomer", list(range(30, 39)), params)
    order = finish_order(engine)
    assert engine.scheduler.num_preemptions > 0
    assert order.index("second") < order.index("newcomer")


def test_chunked_prefill_respects_the_token_budget(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_num_batched_tokens=7)
    engine.add_request("a", list(range(1, 30)), SamplingParams(max_tokens=2, ignore_eos=True))
    engine.add_request("b", list(range(40, 51)), SamplingParams(max_tokens=2, ignore_eos=True))
    schedule, sizes = engine.scheduler.schedule, []

    def recording_schedule():
        out = schedule()
        sizes.append(out.num_tokens)
        return out

    engine.scheduler.schedule = recording_schedule
    assert sorted(finish_order(engine)) == ["a", "b"]
    assert max(sizes) == 7 and sum(sizes) == 29 + 11 + 2  # prompts + one decode each


@pytest.mark.timeout(120)
def test_forked_siblings_waiting_with_shared_blocks_do_not_starve_the_pool(tiny_model_dir):
    # Siblings forked onto a shared prompt wait holding its blocks; with a tight pool and no
    # prefix cache those blocks must be reclaimed, not deadlock the running requests.
    prompts = [list(range(10, 10 + k)) for k in (44, 6, 43, 37, 26, 23, 47, 15)]
    params = [
        SamplingParams(n=n, temperature=0, max_tokens=m, ignore_eos=True)
        for n, m in ((2, 8), (1, 17), (3, 5), (3, 6), (1, 17), (2, 12), (1, 10), (2, 11))
    ]
    batch = [{"prompt_token_ids": p} for p in prompts]
    roomy = LLM(tiny_model_dir, dtype="float32", block_size=4)
    tight = LLM(
        tiny_model_dir,
        dtype="float32",
        block_size=4,
        num_kv_blocks=16,
        max_num_batched_tokens=16,
        max_num_seqs=5,
        enable_prefix_caching=False,
    )
    expected = [[c.token_ids for c in o.outputs] for o in roomy.generate(batch, params)]
    assert [[c.token_ids for c in o.outputs] for o in tight.generate(batch, params)] == expected
    assert tight.stats()["preemptions"] > 0
