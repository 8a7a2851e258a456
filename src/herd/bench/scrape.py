"""Server-side view from Prometheus /metrics, scraped before and after each level.

Any server's metrics are parsed generically (counters and histogram sums/counts, summed over
labels); known prefix-cache counters (vLLM, SGLang, herd) give a hit rate independent of usage."""

# (hits, queries) counter pairs by server; rates are computed from before/after deltas.
PREFIX_PAIRS = (
    ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
    ("vllm:gpu_prefix_cache_hits", "vllm:gpu_prefix_cache_queries"),
    ("herd_prefix_cache_hits", "herd_prefix_cache_queries"),
)
HIT_RATE_GAUGES = ("vllm:gpu_prefix_cache_hit_rate", "sglang:cache_hit_rate")


def _value(metrics: dict[str, float], name: str) -> float | None:
    for key in (name, f"{name}_total"):
        if key in metrics:
            return metrics[key]
    return None


def server_view(before: dict[str, float], after: dict[str, float]) -> dict | None:
    """Deltas of every counter that moved, means of histograms observed during the level,
    and a prefix-cache hit rate when the server exports one."""
    if not after:
        return None
    delta = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
    means = {}
    for key, total in delta.items():
        if key.endswith("_sum"):
            count = delta.get(key[:-4] + "_count")
            if count:
                means[key[:-4]] = total / count
    return {
        "delta": dict(sorted(delta.items())[:200]),  # bounded: some servers export thousands
        "histogram_means": means,
        "prefix_cache_hit_rate": prefix_hit_rate(before, after),
    }


def prefix_hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    for hits, queries in PREFIX_PAIRS:
        h1, q1 = _value(after, hits), _value(after, queries)
        if h1 is None or q1 is None:
            continue
        dq = q1 - (_value(before, queries) or 0.0)
        if dq > 0:
            return (h1 - (_value(before, hits) or 0.0)) / dq
    for gauge in HIT_RATE_GAUGES:
        if gauge in after:
            return after[gauge]
    return None
