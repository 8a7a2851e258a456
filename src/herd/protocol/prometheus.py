"""Prometheus text exposition, parsed once, with `prometheus_client`'s own parser: the gateway
reads replicas' /metrics with it and `herd bench` reads any server's."""

from prometheus_client.parser import text_string_to_metric_families


def parse_metrics(text: str | None, skip_buckets: bool = True) -> dict[str, float]:
    """Flat {sample name: value}, each summed over its label sets (histogram buckets and
    `_created` timestamps left out unless `skip_buckets` is False). A malformed page gives what
    parsed before the fault: a half-broken server still reports what it can."""
    if not text:
        return {}
    flat: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if skip_buckets and s.name.endswith(("_bucket", "_created")):
                    continue
                flat[s.name] = flat.get(s.name, 0.0) + float(s.value)
    except ValueError:
        pass
    return flat
