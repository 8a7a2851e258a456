"""Speculation's pure parts: n-gram prompt lookup, the adaptive k policy (on at batch 1 where a
step is weight-bound, off at 64 where extra tokens cost their full price), the metrics names,
and the `--speculative-config` flag's JSON."""

import argparse

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from herd.cli.config_args import add_config_args, as_flags, config_values
from herd.engine.config import EngineConfig, flat_fields
from herd.engine.spec_decode import ngram_lookup
from herd.engine.spec_policy import AdaptiveK, CostLine, expected_tokens
from herd.server.metrics import ServerMetrics


def test_ngram_lookup_takes_the_longest_most_recent_match():
    # [7, 2, 3] never recurs; [2, 3] follows at 1 (then 4 5) and at 7 (then 9 9): most recent
    assert ngram_lookup([1, 2, 3, 4, 5, 0, 1, 2, 3, 9, 9, 7, 2, 3], 2, 1, 3) == [9, 9]
    assert ngram_lookup([1, 2, 3, 4, 5, 0, 1, 2, 3, 9, 9, 7, 1, 2, 3], 3, 1, 3) == [9, 9, 7]
    assert ngram_lookup([5, 6, 7, 8], 3, 1, 4) == []  # nothing recurs
    assert ngram_lookup([4, 4, 4], 3, 1, 2) == [4]  # overlapping run: what followed [4, 4]
    assert ngram_lookup([7, 1, 2, 8, 1, 2], 4, 2, 2) == [8, 1, 2]


def test_cost_line_fits_a_line():
    line = CostLine()
    for x in (1, 5, 64, 320):
        line.observe(x, 0.02 + 0.001 * x)
    a, b = line.coefficients()
    assert abs(a - 0.02) < 1e-9 and abs(b - 0.001) < 1e-9


def test_adaptive_k_speculates_when_weight_bound_and_stops_when_compute_bound():
    policy = AdaptiveK(k_max=4, adaptive=True)
    assert policy.choose(1) == 4  # nothing measured yet: speculate and learn
    for x in (1, 2, 4, 16, 64, 128, 256, 320):  # 10 ms + 1 ms per token
        policy.step.observe(x, 0.010 + 0.001 * x)
    for _ in range(50):
        policy.observe_acceptance(4, 3)  # 75% of drafts accepted
    assert policy.choose(1) == 4
    assert 0 < policy.choose(16) < 4  # k shrinks with the batch
    assert policy.choose(64) == 0  # and speculation switches off
    for _ in range(200):
        policy.observe_acceptance(4, 0)  # drafts never accepted: off even at batch 1
    assert policy.choose(1) == 0
    assert AdaptiveK(k_max=3, adaptive=False).choose(64) == 3
    assert expected_tokens(0.0, 4) == 1 and expected_tokens(1.0, 4) == 5


def test_speculative_config_flag_takes_json():
    parser = argparse.ArgumentParser()
    add_config_args(parser, flat_fields())
    args = parser.parse_args(
        ["--model", "m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']
    )
    values = config_values(args, flat_fields())
    config = EngineConfig.from_flat(**values)
    assert config.speculative.method == "ngram" and config.speculative.num_speculative_tokens == 3
    flags = as_flags({"speculative_config": config.speculative_config})
    assert (
        parser.parse_args(["--model", "m", *flags]).speculative_config
        == values["speculative_config"]
    )
    assert EngineConfig(model="m").speculative is None


def test_spec_counters_reach_metrics():
    stats = {
        "spec_proposed_tokens": 40,
        "spec_accepted_tokens": 30,
        "spec_acceptance_rate": 0.75,
        "spec_num_tokens": 4,
    }
    metrics = ServerMetrics(lambda: (stats, {"spec_proposed_tokens": 10}))
    text = generate_latest(metrics.registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["herd_spec_proposed_tokens_total"] == 30  # counted from the end of warm-up
    assert samples["herd_spec_accepted_tokens_total"] == 30
    assert samples["herd_spec_acceptance_rate"] == 0.75
    assert samples["herd_spec_num_speculative_tokens"] == 4
