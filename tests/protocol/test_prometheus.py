"""Prometheus text through the one parser: label sets summed, buckets skipped, damage contained."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from herd.protocol.prometheus import parse_metrics


def test_a_real_registry_parses_to_summed_samples():
    registry = CollectorRegistry()
    hits = Counter("herd_prefix_cache_hits", "hits", ["replica"], registry=registry)
    hits.labels("a").inc(3)
    hits.labels("b").inc(4)
    ttft = Histogram("herd_ttft_seconds", "ttft", registry=registry)
    ttft.observe(0.5)
    ttft.observe(1.5)
    flat = parse_metrics(generate_latest(registry).decode())
    assert flat["herd_prefix_cache_hits_total"] == 7
    assert flat["herd_ttft_seconds_sum"] == 2.0 and flat["herd_ttft_seconds_count"] == 2
    assert not any(k.endswith(("_bucket", "_created")) for k in flat)


def test_vllm_names_with_colons_and_a_broken_page():
    text = 'vllm:num_requests_running{model_name="m"} 2\nvllm:kv_cache_usage_perc 0.5\n'
    assert parse_metrics(text) == {"vllm:num_requests_running": 2, "vllm:kv_cache_usage_perc": 0.5}
    assert parse_metrics(text + "garbage here {\n")["vllm:num_requests_running"] == 2
    assert parse_metrics(None) == {} and parse_metrics("") == {}
