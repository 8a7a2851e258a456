"""Write the two example arrival traces for `herd autoscale simulate` (seeded: the same files
every run). Format: see herd.fleet.traces (`time_s,requests_per_s`; the last row ends the trace).

- diurnal.csv: one day at 1-minute resolution, 0.8 req/s around 04:00 rising to 8 req/s around
  16:00 (a 10x daily swing), with 10% log-normal noise per minute.
- spike.csv: 30 minutes at 10-second resolution, 1 req/s with a 10x spike (10 req/s) from minute
  10 to minute 15, with 10% noise.

Rates suit one CPU demo-model replica; `--rate-scale` in the simulator scales them.

    python benchmarks/traces/make_traces.py [--out-dir benchmarks/traces] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from herd.fleet.traces import write_trace


def diurnal(rng: random.Random) -> tuple[list[float], list[float]]:
    low, high = 0.8, 8.0
    times = [60.0 * m for m in range(24 * 60 + 1)]
    rates = []
    for m in range(24 * 60):
        hour = m / 60
        shape = (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2  # 0 at 04:00, 1 at 16:00
        rates.append((low + (high - low) * shape) * rng.lognormvariate(0, 0.1))
    return times, rates


def spike(rng: random.Random) -> tuple[list[float], list[float]]:
    times = [10.0 * k for k in range(181)]
    rates = [(10.0 if 600 <= t < 900 else 1.0) * rng.lognormvariate(0, 0.1) for t in times[:-1]]
    return times, rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(Path(__file__).parent))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out_dir)
    for name, make in (("diurnal", diurnal), ("spike", spike)):
        times, rates = make(random.Random(f"{args.seed}-{name}"))
        write_trace(out / f"{name}.csv", times, rates)
        print(f"wrote {out / name}.csv: {len(rates)} rates, peak {max(rates):.2f} req/s")


if __name__ == "__main__":
    main()
