"""Prometheus metrics of one replica (names prefixed `herd_`, documented in README.md).

Engine-side numbers (running/waiting, KV usage, token and prefix-cache counters, preemptions) come
from the engine's latest `stats()` snapshot at scrape time, minus the warm-up; request latencies
are observed by the server as it streams."""

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip

# stats() key -> (metric name, help); gauges are read as they are.
ENGINE_GAUGES = {
    "num_running": ("herd_num_requests_running", "Requests in the engine's running batch"),
    "num_waiting": ("herd_num_requests_waiting", "Requests waiting (or preempted) in the engine"),
    "kv_usage": ("herd_kv_cache_usage_ratio", "Share of KV cache blocks in use, 0..1"),
    "num_free_blocks": ("herd_kv_cache_free_blocks", "KV blocks free or evictable"),
    "num_total_blocks": ("herd_kv_cache_total_blocks", "KV blocks in the pool"),
    # speculative decoding (0 when off)
    "spec_acceptance_rate": (
        "herd_spec_acceptance_rate",
        "Share of speculative draft tokens accepted since start, 0..1",
    ),
    "spec_num_tokens": (
        "herd_spec_num_speculative_tokens",
        "Drafts per sequence the adaptive policy chose for the latest step (0: off)",
    ),
}
# stats() key -> (metric name without _total, help); counters count from the end of warm-up.
ENGINE_COUNTERS = {
    "prefix_cache_queries": (
        "herd_prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache",
    ),
    "prefix_cache_hits": ("herd_prefix_cache_hits", "Prompt tokens served from the prefix cache"),
    "preemptions": ("herd_preemptions", "Requests preempted because KV blocks ran out"),
    "prompt_tokens": ("herd_prompt_tokens", "Prompt tokens processed (prefill)"),
    "generation_tokens": ("herd_generation_tokens", "Tokens generated"),
    "spec_proposed_tokens": ("herd_spec_proposed_tokens", "Speculative draft tokens verified"),
    "spec_accepted_tokens": ("herd_spec_accepted_tokens", "Speculative draft tokens accepted"),
}
# KV tiers (stats()["kv_tiers"][tier] key -> metric, help), labelled by tier (host, disk).
TIER_GAUGES = {
    "used_blocks": ("herd_kv_tier_used_blocks", "KV blocks held in the tier"),
    "total_blocks": ("herd_kv_tier_total_blocks", "KV blocks the tier can hold"),
    "used_bytes": ("herd_kv_tier_used_bytes", "Bytes of KV blocks held in the tier"),
    "total_bytes": ("herd_kv_tier_total_bytes", "The tier's size in bytes"),
}
TIER_COUNTERS = {
    "hits": ("herd_kv_tier_hits", "KV blocks restored from the tier into the device pool"),
    "bytes_in": ("herd_kv_tier_bytes_in", "Bytes written into the tier"),
    "bytes_out": ("herd_kv_tier_bytes_out", "Bytes read out of the tier"),
    "dropped": ("herd_kv_tier_dropped_blocks", "KV blocks pushed out of the last tier"),
}


class _EngineCollector:
    """Reads the engine's latest stats snapshot on every scrape."""

    def __init__(
        self,
        stats: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        model_info: Callable[[], dict[str, str]],
    ) -> None:
        self._stats = stats
        self._model_info = model_info

    def collect(self):
        info = self._model_info()
        if info:  # known once the model is loaded
            gauge = GaugeMetricFamily(
                "herd_model_info", "Precision of the served model (always 1)", labels=list(info)
            )
            gauge.add_metric(list(info.values()), 1.0)
            yield gauge
        now, base = self._stats()
        for key, (name, doc) in ENGINE_GAUGES.items():
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(now.get(key, 0)))
            yield gauge
        for key, (name, doc) in ENGINE_COUNTERS.items():
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(now.get(key, 0) - base.get(key, 0)))
            yield counter
        yield from _tier_metrics(now.get("kv_tiers") or {}, base.get("kv_tiers") or {})


def _tier_metrics(now: dict[str, Any], base: dict[str, Any]):
    """One family per tier statistic, a sample per tier; nothing when no tier is configured."""
    tiers = [t for t, v in now.items() if isinstance(v, dict)]
    if not tiers:
        return
    for table, family in ((TIER_GAUGES, GaugeMetricFamily), (TIER_COUNTERS, CounterMetricFamily)):
        for key, (name, doc) in table.items():
            metric = family(name, doc, labels=["tier"])
            for t in tiers:
                since = base.get(t, {}).get(key, 0) if family is CounterMetricFamily else 0
                metric.add_metric([t], float(now[t].get(key, 0) - since))
            yield metric


class ServerMetrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(
        self,
        engine_stats: Callable[[], tuple[dict, dict]],
        model_info: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.registry.register(_EngineCollector(engine_stats, model_info))
        self.ttft = Histogram(
            "herd_time_to_first_token_seconds",
            "Request arrival to its first token leaving the server",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "herd_inter_token_latency_seconds",
            "Time between consecutive tokens of one completion",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "herd_e2e_request_latency_seconds",
            "Request arrival to its last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "herd_request_queue_time_seconds",
            "Engine arrival to first scheduled",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.success = Counter(
            "herd_request_success",
            "Finished completions (choices) by finish reason",
            ["finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "herd_rejected_requests",
            "Requests the server refused itself, by HTTP status and reason (the error's code or "
            "type)",
            ["status", "reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
