"""When requests are sent: open-loop arrival times, kept apart from what is sent.

Gamma-distributed gaps with mean 1/rate; burstiness 1.0 is a Poisson process, below 1 is
burstier, above 1 more regular (the convention of vLLM's benchmark_serving)."""

import math

import numpy as np


def arrival_offsets(rate: float, count: int, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds from the level's start at which each of `count` requests arrives."""
    if count <= 0:
        return []
    if math.isinf(rate):
        return [0.0] * count  # everything at once
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be positive")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    gaps[0] = 0.0  # the first request starts the level
    return np.cumsum(gaps).tolist()


def arrivals_until(
    rate: float, duration: float, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """Arrival offsets within `duration` seconds (for duration-bounded open-loop levels)."""
    expected = rate * duration
    count = int(expected + 6 * math.sqrt(expected) + 16)  # enough with overwhelming probability
    return [t for t in arrival_offsets(rate, count, burstiness, seed) if t < duration]
