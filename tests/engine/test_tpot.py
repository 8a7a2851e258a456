"""`--target-tpot-ms`: the decode batch is capped so a step's measured time stays under target."""

import pytest

from herd.engine.config import EngineConfig, SchedulerConfig
from herd.engine.llm_engine import LLMEngine
from herd.engine.sampling_params import SamplingParams
from herd.engine.tpot import TpotController


def test_cap_follows_a_fitted_line_through_measured_step_times():
    c = TpotController(target_s=0.050, max_seqs=128)
    assert c.cap() == 1  # nothing measured: a slow start
    for n in (1, 2, 4, 8):
        for _ in range(5):
            c.observe(n, 0.010 + 0.002 * n)  # 10 ms fixed + 2 ms per sequence
    assert c.fit() == pytest.approx((0.010, 0.002))
    assert c.cap() == 16  # the line allows 20, but 8 is the largest size seen: twice that
    for _ in range(5):
        c.observe(16, 0.010 + 0.002 * 16)
    assert c.cap() == 20  # 10 + 2 x 20 = 50 ms


def test_a_size_measured_over_target_is_never_allowed():
    c = TpotController(target_s=0.050, max_seqs=64)
    for n, t in ((1, 0.012), (2, 0.014), (20, 0.080), (19, 0.060)):
        c.observe(n, t)
    cap = c.cap()
    assert cap is not None and cap < 19
    assert all(c.ewma.get(n, 0) <= 0.050 for n in range(1, cap + 1))


def test_cap_stays_within_one_and_max_seqs():
    c = TpotController(target_s=0.001, max_seqs=8)
    c.observe(4, 0.1)
    assert c.cap() == 1
    c = TpotController(target_s=10.0, max_seqs=8)
    c.observe(1, 0.001)
    assert c.cap() == 2  # slow start: twice what was measured
    c.observe(4, 0.001)
    assert c.cap() == 8


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="target_tpot_ms"):
        SchedulerConfig(target_tpot_ms=0)


def test_engine_starts_slow_then_opens_the_batch_to_the_target(tiny_model_dir):
    engine = LLMEngine(
        EngineConfig(
            model=str(tiny_model_dir),
            dtype="float32",
            scheduler=SchedulerConfig(max_num_seqs=8, target_tpot_ms=60_000),
        )
    )
    params = SamplingParams(max_tokens=30, ignore_eos=True)  # none finishes during the test
    for i in range(4):
        engine.add_request(f"r{i}", [1 + i, 2, 3], params)
    engine.step()
    assert len(engine.scheduler.running) == 1  # nothing measured yet: one sequence
    while engine.scheduler.seq_cap == 1:
        engine.step()  # the first decode step is measured
    engine.step()
    assert engine.scheduler.seq_cap == 2 and len(engine.scheduler.running) == 2  # doubled
    for _ in range(3):  # one more decode step measured at 2: the cap doubles again
        engine.step()
    assert engine.scheduler.seq_cap >= 4 and len(engine.scheduler.running) == 4


def test_engine_admits_no_more_sequences_than_the_target_allows(tiny_model_dir):
    # A target no step can meet caps the batch at one sequence once a decode step is measured.
    engine = LLMEngine(
        EngineConfig(
            model=str(tiny_model_dir),
            dtype="float32",
            scheduler=SchedulerConfig(max_num_seqs=8, target_tpot_ms=1e-6),
        )
    )
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    engine.add_request("first", [1, 2, 3], params)
    engine.step()  # prefill: not measured
    engine.step()  # a pure decode step: measured, cap -> 1
    assert engine.scheduler.max_seqs == 1
    for i in range(3):
        engine.add_request(f"later-{i}", [4 + i, 5, 6], params)
    done = []
    while engine.has_unfinished_requests():
        done += [o.request_id for o in engine.step() if o.finished]
        assert len(engine.scheduler.running) <= 1
    assert done == ["first", "later-0", "later-1", "later-2"]
