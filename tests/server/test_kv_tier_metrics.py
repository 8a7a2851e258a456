"""/metrics of KV tiers: one sample per tier, gauges as they are, counters from the warm-up
baseline; nothing when no tier is configured. Read back with prometheus_client's parser."""

from prometheus_client.parser import text_string_to_metric_families

from herd.server.metrics import ServerMetrics


def tier(**kw) -> dict:
    base = dict(used_blocks=0, total_blocks=10, used_bytes=0, total_bytes=20480, hits=0)
    return base | dict(bytes_in=0, bytes_out=0, dropped=0) | kw


def samples(now: dict, base: dict) -> dict[tuple[str, str], float]:
    text = ServerMetrics(lambda: (now, base)).render().decode()
    return {
        (s.name, s.labels.get("tier", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("herd_kv_tier")
    }


def test_each_tier_reports_usage_hits_and_bytes_since_warm_up():
    base = {"kv_tiers": {"host": tier(hits=2, bytes_in=4096)}}
    now = {
        "kv_tiers": {
            "host": tier(used_blocks=3, used_bytes=6144, hits=5, bytes_in=10240, bytes_out=2048),
            "disk": tier(total_blocks=100, hits=1, dropped=4),
            "restored_blocks": 6,
        }
    }
    got = samples(now, base)
    assert got[("herd_kv_tier_used_blocks", "host")] == 3
    assert got[("herd_kv_tier_total_blocks", "disk")] == 100
    assert got[("herd_kv_tier_used_bytes", "host")] == 6144
    assert got[("herd_kv_tier_hits_total", "host")] == 3  # 5 minus the 2 of the warm-up
    assert got[("herd_kv_tier_hits_total", "disk")] == 1
    assert got[("herd_kv_tier_bytes_in_total", "host")] == 6144
    assert got[("herd_kv_tier_bytes_out_total", "host")] == 2048
    assert got[("herd_kv_tier_dropped_blocks_total", "disk")] == 4


def test_no_tier_no_tier_metrics():
    assert samples({"kv_tiers": {}}, {}) == {}
    assert samples({}, {}) == {}
