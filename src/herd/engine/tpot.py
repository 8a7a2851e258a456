"""SLA-aware batch sizing (`--target-tpot-ms`): how many sequences may decode together so one
decode step, the inter-token latency every running request sees, stays under a target.

Step times of pure decode steps are measured online (an EWMA per batch size), a line
`step = a + b x n` is fitted through them, and the cap is the largest n the line keeps under the
target, growing at most to twice the largest batch measured within it (a slow start). Memory-aware, SLA-constrained dynamic batching after Pang et al. 2024."""

from __future__ import annotations

ALPHA = 0.2  # weight of a new step time in its batch size's EWMA


class TpotController:
    """Learns decode step time as a function of batch size and answers the largest batch size
    whose predicted step time stays under `target_s`. Promises: `cap()` is 1 until a decode step
    has been measured (a slow start: the first measurement, taken as proportional to the batch
    size, then opens it), never below 1 and never above `max_seqs`; a batch size whose
    measured EWMA is over the target is never allowed, whatever the fitted line says."""

    def __init__(self, target_s: float, max_seqs: int):
        self.target_s = target_s
        self.max_seqs = max_seqs
        self.ewma: dict[int, float] = {}  # batch size -> EWMA of its decode step time (s)

    def observe(self, batch_size: int, step_s: float) -> None:
        old = self.ewma.get(batch_size)
        self.ewma[batch_size] = step_s if old is None else (1 - ALPHA) * old + ALPHA * step_s

    def fit(self) -> tuple[float, float] | None:
        """(a, b) of step = a + b x n by least squares over the measured sizes; with one size,
        step time is taken as proportional to n (conservative: no fixed cost)."""
        if not self.ewma:
            return None
        if len(self.ewma) == 1:
            ((n, t),) = self.ewma.items()
            return 0.0, t / n
        xs, ys = list(self.ewma), list(self.ewma.values())
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx)
        return my - b * mx, b

    def cap(self) -> int:
        line = self.fit()
        if line is None:
            return 1
        a, b = line
        n = self.max_seqs if b <= 0 else int((self.target_s - a) / b + 1e-9)  # 19.9999 is 20
        # Grow by at most doubling the largest size measured within the target: a line fitted
        # through small batches (fixed costs dominate) underestimates large ones.
        proven = max((k for k, t in self.ewma.items() if t <= self.target_s), default=0)
        n = max(1, min(self.max_seqs, n, 2 * proven or 1))
        # A size measured over the target is over it, whatever the line says.
        while n > 1 and self.ewma.get(n, 0.0) > self.target_s:
            n -= 1
        return n
