"""Metric arithmetic on synthetic timelines: no server, exact expected values."""

import math

import numpy as np
import pytest

from herd.bench.arrivals import arrival_offsets, arrivals_until
from herd.bench.config import Cost, Slo
from herd.bench.metrics import chunk_tokens, cost_per_million, distribution, itl_samples, summarize
from herd.bench.request import RequestOutput
from herd.bench.scrape import prefix_hit_rate, server_view
from herd.bench.stats import bootstrap_ci, verdict, welch_ci
from herd.protocol.prometheus import parse_metrics


def timeline(start, ttft, gaps, tokens_per_chunk=1, usage=True, chars=None) -> RequestOutput:
    times = [start + ttft]
    for g in gaps:
        times.append(times[-1] + g)
    n_chunks = len(times)
    out = RequestOutput(start=start, end=times[-1], ok=True, chunk_times=times,
                        chunk_chars=chars or [4 * tokens_per_chunk] * n_chunks,
                        text=" tok" * tokens_per_chunk * n_chunks, expected_input_tokens=10)  # fmt: skip
    if usage:
        out.prompt_tokens, out.completion_tokens = 10, tokens_per_chunk * n_chunks
    return out


def test_distribution_percentiles_match_numpy():
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    d = distribution(values)
    assert d["mean"] == pytest.approx(50.5)
    assert (
        d["p50"] == pytest.approx(50.5)
        and d["p90"] == pytest.approx(90.1)
        and d["p99"] == pytest.approx(99.01)
    )
    assert d["max"] == pytest.approx(100)
    assert distribution([])["p50"] is None


def test_itl_splits_multi_token_chunks():
    # First chunk (TTFT) then chunks of 4 tokens, 40 ms apart: 10 ms per token, 4 samples each.
    assert itl_samples([0.1, 0.14, 0.18], [4, 4, 4]) == pytest.approx([0.01] * 8)
    # Mixed chunk sizes: a 2-token chunk after 30 ms is two 15 ms samples.
    assert itl_samples([0.0, 0.01, 0.04], [1, 1, 2]) == pytest.approx([0.01, 0.015, 0.015])


def test_chunk_tokens_sum_to_usage():
    assert chunk_tokens(5, [3, 3, 3, 3, 3]) == [1] * 5
    counts = chunk_tokens(10, [4, 8, 4, 4])
    assert sum(counts) == 10 and counts[1] == max(counts)
    assert chunk_tokens(3, []) == []


def test_summary_ttft_tpot_e2e_and_throughput():
    outs = [timeline(start=float(i), ttft=0.1, gaps=[0.02] * 9) for i in range(4)]  # 10 tokens each
    s = summarize(outs, duration_s=2.0, slo=Slo(), cost=Cost())
    assert s["ttft_ms"]["p50"] == pytest.approx(100)
    assert s["tpot_ms"]["mean"] == pytest.approx(20)  # (e2e - ttft) / (10 - 1)
    assert s["itl_ms"]["p99"] == pytest.approx(20)
    assert s["e2e_ms"]["max"] == pytest.approx(280)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(40 / 2.0)
    assert s["throughput"]["total_tokens_per_s"] == pytest.approx((40 + 40) / 2.0)
    assert s["tokens"]["source"] == "usage"
    assert s["goodput"]["requests_per_s"] is None  # no SLO given


def test_multi_token_chunks_give_the_same_tpot_and_itl_as_single_tokens():
    single = timeline(0.0, ttft=0.1, gaps=[0.01] * 11)  # 12 tokens, 1 per chunk
    multi = timeline(
        0.0, ttft=0.1 + 0.03, gaps=[0.04] * 2, tokens_per_chunk=4
    )  # 12 tokens, 4 per chunk
    a = summarize([single], 1.0, Slo(), Cost())
    b = summarize([multi], 1.0, Slo(), Cost())
    assert b["itl_ms"]["p50"] == pytest.approx(10) == pytest.approx(a["itl_ms"]["p50"])
    assert b["tokens"]["output"] == a["tokens"]["output"] == 12


def test_goodput_counts_only_requests_within_every_slo_part():
    fast = timeline(0.0, ttft=0.1, gaps=[0.01] * 9)
    slow_first = timeline(0.0, ttft=0.9, gaps=[0.01] * 9)
    slow_tokens = timeline(0.0, ttft=0.1, gaps=[0.2] * 9)
    failed = RequestOutput(start=0.0, end=1.0, ok=False, error="http_500")
    s = summarize(
        [fast, slow_first, slow_tokens, failed], 2.0, Slo.parse("ttft=500ms,tpot=50ms"), Cost()
    )
    assert s["goodput"]["requests_per_s"] == pytest.approx(1 / 2.0)
    assert s["goodput"]["fraction"] == pytest.approx(1 / 4)
    assert s["requests"] == {"ok": 3, "failed": 1, "failed_by_reason": {"http_500": 1}}


def test_slo_parsing():
    slo = Slo.parse("ttft=0.5s, tpot=50ms,e2e=10")
    assert (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms, slo.itl_ms) == (500, 50, 10, None)


def test_cost_per_million_tokens():
    # 8 GPUs at $2.50/h = $20/h; 2000 tok/s = 7.2M tok/h -> $2.78 per million.
    assert cost_per_million(2000, Cost(gpus=8, gpu_hour_cost=2.5)) == pytest.approx(20 / 7.2)
    assert cost_per_million(2000, Cost(gpus=8)) is None
    assert cost_per_million(0, Cost(gpu_hour_cost=1)) is None


def test_prefix_cache_hit_rate_from_usage():
    a, b = timeline(0, 0.1, [0.01]), timeline(0, 0.1, [0.01])
    a.cached_tokens, b.cached_tokens = 10, 0
    s = summarize([a, b], 1.0, Slo(), Cost())
    assert s["prefix_cache"] == {"hit_rate": 0.5, "source": "usage"}


def test_poisson_arrivals_have_the_asked_rate():
    offsets = arrival_offsets(rate=10, count=5000, seed=1)
    assert offsets[0] == 0 and all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))
    assert len(offsets) / offsets[-1] == pytest.approx(10, rel=0.05)
    gaps = np.diff(offsets)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.1)  # exponential: CV 1
    bursty = np.diff(arrival_offsets(rate=10, count=5000, burstiness=0.25, seed=1))
    assert np.std(bursty) / np.mean(bursty) == pytest.approx(2.0, rel=0.15)  # CV = 1/sqrt(shape)
    assert arrival_offsets(math.inf, 3) == [0.0, 0.0, 0.0]
    within = arrivals_until(rate=20, duration=5, seed=2)
    assert max(within) < 5 and len(within) == pytest.approx(100, rel=0.3)


def test_metrics_scrape_deltas_and_hit_rates():
    before = parse_metrics(
        "# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total 100\n"
        "# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total 20\n"
        '# TYPE ttft histogram\nttft_sum 1.0\nttft_count 10\nttft_bucket{le="+Inf"} 10\n'
    )
    after = parse_metrics(
        '# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{model="a"} 300\n'
        '# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{model="a"} 170\n'
        '# TYPE ttft histogram\nttft_sum 3.0\nttft_count 20\nttft_bucket{le="+Inf"} 20\n'
    )
    assert prefix_hit_rate(before, after) == pytest.approx(150 / 200)
    view = server_view(before, after)
    assert view["histogram_means"]["ttft"] == pytest.approx(0.2)
    assert "ttft_bucket" not in view["delta"]
    assert server_view({}, {}) is None
    assert prefix_hit_rate({}, parse_metrics("sglang:cache_hit_rate 0.4\n")) == pytest.approx(0.4)


def test_noise_verdicts():
    assert verdict(welch_ci([100, 101, 99], [150, 149, 151])) == "yes"
    assert verdict(welch_ci([100, 110, 90], [101, 111, 91])) == "no"
    assert welch_ci([1.0], [2.0, 3.0]) is None and verdict(None) == "n/a"
    rng = np.random.default_rng(0)
    a, b = rng.normal(100, 5, 200).tolist(), rng.normal(130, 5, 200).tolist()
    assert verdict(bootstrap_ci(a, b, 50)) == "yes"
    assert verdict(bootstrap_ci(a, a, 50)) == "no"
