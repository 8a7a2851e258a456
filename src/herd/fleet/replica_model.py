"""One replica's behaviour under load, fitted from a `herd bench run` result (schema
`herd.bench.run/1`, read as plain JSON so the fleet does not depend on the bench package):
throughput and TTFT by concurrency, interpolated between the measured levels."""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path


@dataclass(frozen=True)
class ReplicaModel:
    """Measured points (concurrency, requests/s, TTFT seconds), ascending in concurrency. Between
    points values are interpolated linearly (throughput from (0, 0)); past the last point the last
    value holds, and the simulator never admits more than `max_concurrency` per replica."""

    concurrency: tuple[float, ...]
    throughput_rps: tuple[float, ...]
    ttft_s: tuple[float, ...]
    label: str = "bench run"

    def __post_init__(self) -> None:
        n = len(self.concurrency)
        if n == 0 or n != len(self.throughput_rps) or n != len(self.ttft_s):
            raise ValueError("a replica model needs at least one (concurrency, rps, ttft) point")
        if any(b <= a for a, b in zip(self.concurrency[:-1], self.concurrency[1:], strict=True)):
            raise ValueError("replica model concurrency points must be strictly ascending")
        if self.concurrency[0] <= 0 or min(self.throughput_rps) <= 0:
            raise ValueError("replica model points need concurrency > 0 and throughput > 0")

    @property
    def max_concurrency(self) -> float:
        return self.concurrency[-1]

    @property
    def min_service_s(self) -> float:
        """The shortest measured request duration, n / throughput(n) by Little's law."""
        return min(c / r for c, r in zip(self.concurrency, self.throughput_rps, strict=True))

    def throughput(self, n: float) -> float:
        """Requests/s one replica completes with `n` requests in flight."""
        return _interp(n, (0.0, *self.concurrency), (0.0, *self.throughput_rps))

    def ttft(self, n: float) -> float:
        """Time to first token (s) at `n` requests in flight on one replica."""
        return _interp(n, self.concurrency, self.ttft_s)

    def capacity_rps(self, ttft_slo_s: float) -> float:
        """The most requests/s one replica sustains at a measured level whose TTFT is within the
        SLO (the lowest level's throughput when none is)."""
        ok = [r for r, t in zip(self.throughput_rps, self.ttft_s, strict=True) if t <= ttft_slo_s]
        return max(ok) if ok else self.throughput_rps[0]


def _interp(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect_left(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def load_bench_json(path: str | Path) -> dict:
    """A bench result file as a dict; `ValueError` naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read bench results {path}: {exc}") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("herd.bench.run/"):
        raise ValueError(f"{path} is not a herd bench results file (schema herd.bench.run/1)")
    return data


def _level_point(level: dict, percentile: str) -> tuple[float, float, float] | None:
    rps = (level.get("throughput") or {}).get("requests_per_s")
    ttft_ms = (level.get("ttft_ms") or {}).get(percentile)
    if not (level.get("requests") or {}).get("ok") or not rps or ttft_ms is None:
        return None
    load = level["load"]
    if load["kind"] == "concurrency":
        users = float(load["value"])
    else:  # open loop: Little's law gives the mean number in flight
        users = rps * ((level.get("e2e_ms") or {}).get("mean") or 0.0) / 1000
    return (users, float(rps), ttft_ms / 1000) if users > 0 else None


def fit_replica_model(bench: dict, percentile: str = "p50") -> ReplicaModel:
    """The model from a bench result's levels (failed or empty levels skipped; levels at the same
    concurrency averaged). Throughput is made non-decreasing in concurrency (a level that measured
    less than a lighter one keeps the lighter one's): a dip is measurement noise, and a model
    whose replicas complete less under more load would make queues run away that the real
    replica drains. `percentile` picks the TTFT statistic: mean, p50, p90 or p99."""
    by_users: dict[float, list[tuple[float, float]]] = {}
    for level in bench.get("levels") or []:
        point = _level_point(level, percentile)
        if point:
            by_users.setdefault(round(point[0], 6), []).append(point[1:])
    if not by_users:
        raise ValueError("the bench result has no level with successful requests and TTFT")
    users = sorted(by_users)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rps = list(accumulate((mean([p[0] for p in by_users[u]]) for u in users), max))
    return ReplicaModel(
        concurrency=tuple(users),
        throughput_rps=tuple(rps),
        ttft_s=tuple(mean([p[1] for p in by_users[u]]) for u in users),
        label=str(bench.get("label") or "bench run"),
    )
