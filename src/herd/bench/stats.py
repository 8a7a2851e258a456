"""Is a difference between two runs beyond run-to-run noise? 95% confidence intervals for the
difference: Welch's t-interval over repeat runs when both sides have repeats, otherwise a
bootstrap over per-request samples (latency percentiles only; throughput needs repeats)."""

import math

import numpy as np

# Two-sided 95% Student t critical values by degrees of freedom (beyond 30: normal 1.96).
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
        12: 2.18, 15: 2.13, 20: 2.09, 25: 2.06, 30: 2.04}  # fmt: skip


def t95(df: float) -> float:
    if df > 30:
        return 1.96
    keys = [k for k in _T95 if k <= max(1.0, df)]
    return _T95[max(keys)]  # rounding df down is conservative


def welch_ci(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """95% CI of mean(b) - mean(a); None with fewer than two values on either side."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(b) - np.mean(a))
    se = math.sqrt(va + vb)
    if se == 0:
        return (diff, diff)
    df = (va + vb) ** 2 / ((va**2) / (len(a) - 1) + (vb**2) / (len(b) - 1))
    half = t95(df) * se
    return (diff - half, diff + half)


def bootstrap_ci(
    a: list[float], b: list[float], q: float, n: int = 400, seed: int = 0
) -> tuple[float, float] | None:
    """95% CI of percentile_q(b) - percentile_q(a) by resampling requests."""
    if len(a) < 5 or len(b) < 5:
        return None
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a), np.asarray(b)
    da = np.percentile(rng.choice(xa, (n, len(xa))), q, axis=1)
    db = np.percentile(rng.choice(xb, (n, len(xb))), q, axis=1)
    lo, hi = np.percentile(db - da, [2.5, 97.5])
    return (float(lo), float(hi))


def verdict(ci: tuple[float, float] | None) -> str:
    if ci is None:
        return "n/a"
    return "yes" if ci[0] > 0 or ci[1] < 0 else "no"
