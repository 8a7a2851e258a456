"""Preemption by class: a waiting request of a higher priority takes a running lower one's batch
slot or blocks; the victim keeps its place and, recomputed, gives the same greedy tokens."""

from herd import LLM
from herd.engine.config import EngineConfig, SchedulerConfig
from herd.engine.llm_engine import LLMEngine
from herd.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def engine_with(model_dir, num_kv_blocks=None, **sched) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=str(model_dir),
            dtype="float32",
            block_size=4,
            num_kv_blocks=num_kv_blocks,
            scheduler=SchedulerConfig(**sched),
        )
    )


def run_all(engine: LLMEngine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.outputs[0].token_ids)
    return tokens


def test_high_priority_arrival_takes_a_full_batchs_slot_next_step(tiny_model_dir):
    engine = engine_with(tiny_model_dir, max_num_seqs=2)
    for name in ("batch-1", "batch-2"):
        engine.add_request(name, [1, 2, 3, 4, 5], GREEDY, priority=10)
    engine.step()
    engine.step()
    assert len(engine.scheduler.running) == 2
    engine.add_request("chat", [7, 8, 9], GREEDY, priority=0)
    first = {o.request_id: o for o in engine.step()}
    assert "chat" in first and first["chat"].outputs[0].token_ids  # its first token, this step
    assert set(first) == {"chat"}  # that step was its alone: no full batch of decodes to wait on
    assert engine.scheduler.num_preemptions == 1
    assert {o.request_id for o in engine.step()} == {"chat", "batch-1"}  # then both decode
    # The worst running one (latest of the lowest class) went back to wait, not the other.
    assert [r.request_id for r in engine.scheduler.waiting] == ["batch-2"]


def test_high_priority_arrival_preempts_when_blocks_run_out(tiny_model_dir):
    # 10 blocks of 4 tokens: two 12-token prompts growing by 12 fill the pool.
    engine = engine_with(tiny_model_dir, num_kv_blocks=10, max_num_seqs=8)
    for name in ("batch-1", "batch-2"):
        engine.add_request(name, list(range(10, 22)), GREEDY, priority=10)
    for _ in range(6):
        engine.step()
    engine.add_request("chat", list(range(30, 42)), GREEDY, priority=0)
    first = {o.request_id: o for o in engine.step()}
    assert "chat" in first and first["chat"].outputs[0].token_ids
    assert engine.scheduler.num_preemptions >= 1


def test_equal_priorities_never_preempt_each_other(tiny_model_dir):
    engine = engine_with(tiny_model_dir, max_num_seqs=2)
    for name in ("a", "b"):
        engine.add_request(name, [1, 2, 3], GREEDY, priority=5)
    engine.step()
    engine.add_request("c", [4, 5, 6], GREEDY, priority=5)
    for _ in range(5):
        assert "c" not in {o.request_id for o in engine.step()}
    assert engine.scheduler.num_preemptions == 0


def test_preempted_greedy_requests_give_the_uncontended_tokens(tiny_model_dir):
    prompts = {f"batch-{i}": list(range(10 + i, 25 + i)) for i in range(4)}
    urgent = {f"chat-{i}": list(range(50 + i, 58 + i)) for i in range(3)}
    reference = LLM(tiny_model_dir, dtype="float32", block_size=4)
    expected = {
        name: reference.generate([{"prompt_token_ids": p}], GREEDY)[0].outputs[0].token_ids
        for name, p in {**prompts, **urgent}.items()
    }
    engine = engine_with(tiny_model_dir, num_kv_blocks=14, max_num_seqs=3)
    for name, p in prompts.items():
        engine.add_request(name, p, GREEDY, priority=10)
    got: dict[str, list[int]] = {}
    for step in range(40):
        if step in (3, 6, 9):
            name = f"chat-{step // 3 - 1}"
            engine.add_request(name, urgent[name], GREEDY, priority=0)
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.outputs[0].token_ids)
    for name, tokens in run_all(engine).items():
        got.setdefault(name, []).extend(tokens)
    assert engine.scheduler.num_preemptions > 0
    assert got == expected
