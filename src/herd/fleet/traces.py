"""Arrival traces for the autoscaling simulator: a CSV of request rates over time.

Format: a header line `time_s,requests_per_s`, then one row per change of rate. The rate of a
row holds from its `time_s` until the next row's; the last row marks the end of the trace (its
rate is not used). Times are seconds from the start, strictly increasing; lines starting with `#`
are comments. `benchmarks/traces/make_traces.py` writes the two examples."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

HEADER = ("time_s", "requests_per_s")


@dataclass(frozen=True)
class Trace:
    """A piecewise-constant arrival rate: `rates[i]` requests/s over [times[i], times[i + 1])."""

    times: tuple[float, ...]
    rates: tuple[float, ...]  # one fewer than times

    def __post_init__(self) -> None:
        if len(self.times) < 2 or len(self.rates) != len(self.times) - 1:
            raise ValueError("a trace needs at least two rows (the last one marks its end)")
        if any(b <= a for a, b in zip(self.times[:-1], self.times[1:], strict=True)):
            raise ValueError("trace times must be strictly increasing")
        if any(r < 0 or not math.isfinite(r) for r in self.rates):
            raise ValueError("trace rates must be finite and >= 0")

    @property
    def duration_s(self) -> float:
        return self.times[-1] - self.times[0]

    @property
    def peak_rps(self) -> float:
        return max(self.rates)

    def scaled(self, factor: float) -> Trace:
        return Trace(self.times, tuple(r * factor for r in self.rates))

    def arrivals_per_tick(self, dt: float) -> list[float]:
        """Expected arrivals in each tick [k dt, (k + 1) dt) from the trace's start: the rate's
        integral, so fractional arrivals carry no rounding drift."""
        start, ticks = self.times[0], math.ceil(self.duration_s / dt - 1e-9)
        out, seg = [], 0
        for k in range(ticks):
            t0, t1 = start + k * dt, min(start + (k + 1) * dt, self.times[-1])
            total = 0.0
            while seg < len(self.rates) and self.times[seg + 1] <= t0:
                seg += 1
            i = seg
            while i < len(self.rates) and self.times[i] < t1:
                lo, hi = max(t0, self.times[i]), min(t1, self.times[i + 1])
                total += self.rates[i] * max(0.0, hi - lo)
                i += 1
            out.append(total)
        return out


def read_trace(path: str | Path) -> Trace:
    """Read a trace CSV; `ValueError` naming the file and line on bad input."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read trace {path}: {exc}") from None
    rows = [r for r in csv.reader(x for x in lines if x.strip() and not x.startswith("#"))]
    if not rows or tuple(c.strip() for c in rows[0]) != HEADER:
        raise ValueError(f"{path}: the first line must be the header {','.join(HEADER)}")
    times, rates = [], []
    for n, row in enumerate(rows[1:], start=2):
        try:
            t, r = (float(c) for c in row)
        except ValueError:
            raise ValueError(f"{path}: row {n} is not two numbers: {','.join(row)}") from None
        times.append(t)
        rates.append(r)
    try:
        return Trace(tuple(times), tuple(rates[:-1]))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def write_trace(path: str | Path, times: list[float], rates: list[float]) -> None:
    """Write `times` (one more than `rates`: the last marks the end) in the trace format."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for t, r in zip(times, [*rates, 0.0], strict=True):
            w.writerow([f"{t:g}", f"{r:.3f}"])
