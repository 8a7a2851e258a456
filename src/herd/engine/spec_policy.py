"""`AdaptiveK`: how many drafts per sequence a step should verify, from measured costs.

A step over T tokens costs about a + b*T (a decayed least-squares line over the engine's own
steps); a draft-model pass over B sequences about c + d*B. With acceptance rate alpha (a decayed
mean), k drafts yield (1 - alpha^(k+1)) / (1 - alpha) tokens per sequence for one step over
B*(k+1) tokens plus k draft passes; no speculation yields 1 token for a step over B tokens. The
policy picks the k with the best tokens per second, 0 (off) when none beats plain decoding:
at batch 1 a step is weight-bound (a >> b), at batch 64 the extra tokens dominate (b*T).
"""

from dataclasses import dataclass

DECAY = 0.97  # each observation's weight decays so the fit follows the current load
PRIOR_WEIGHT = 4.0  # drafts' worth of weight the prior acceptance rate keeps
MARGIN = 1.05  # speculate only when predicted to gain at least 5%


@dataclass
class CostLine:
    """y ~ a + b*x by least squares over decayed sums of observations (x tokens or sequences,
    y seconds); `at(x)` predicts, `ready` once two distinct x were seen."""

    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def observe(self, x: float, y: float) -> None:
        self.n = self.n * DECAY + 1
        self.sx = self.sx * DECAY + x
        self.sy = self.sy * DECAY + y
        self.sxx = self.sxx * DECAY + x * x
        self.sxy = self.sxy * DECAY + x * y

    @property
    def ready(self) -> bool:
        return self.n > 0 and self._var() > 1e-9 * max(1.0, self.sxx / self.n)

    def _var(self) -> float:
        return self.sxx / self.n - (self.sx / self.n) ** 2 if self.n else 0.0

    def coefficients(self) -> tuple[float, float]:
        """(a, b), both >= 0 (a noisy fit never predicts a negative cost or slope)."""
        if not self.n:
            return 0.0, 0.0
        mx, my = self.sx / self.n, self.sy / self.n
        if not self.ready:
            return my, 0.0
        b = max(0.0, (self.sxy / self.n - mx * my) / self._var())
        return max(0.0, my - b * mx), b

    def at(self, x: float) -> float:
        a, b = self.coefficients()
        return a + b * x


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one verification step yields with k drafts each accepted with probability alpha
    (the accepted prefix plus the target's own token)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


class AdaptiveK:
    """Chooses k (0: off) for a batch size from the measured step-cost line, the draft pass line
    and the running acceptance rate; without `adaptive` always `k_max`. Until the step line has
    two distinct sizes it speculates with `k_max` (the first steps teach it)."""

    def __init__(self, k_max: int, adaptive: bool, prior: float = 0.6) -> None:
        self.k_max = k_max
        self.adaptive = adaptive
        self.prior = prior  # acceptance rate assumed before (and long after) any verification
        self.proposed = 0.0  # decayed sums of drafts proposed and accepted
        self.accepted = 0.0
        self.step = CostLine()  # target step seconds vs tokens
        self.draft = CostLine()  # one draft pass seconds vs sequences (draft model only)
        self.last_k = k_max

    @property
    def alpha(self) -> float:
        """Acceptance rate: recent drafts, pulled towards the prior by PRIOR_WEIGHT drafts' worth,
        so with speculation off for a while it drifts back and gets tried again."""
        return (self.accepted + self.prior * PRIOR_WEIGHT) / (self.proposed + PRIOR_WEIGHT)

    def observe_acceptance(self, proposed: int, accepted: int) -> None:
        """Called once per step (with zeros when nothing was verified)."""
        self.proposed = self.proposed * DECAY + proposed
        self.accepted = self.accepted * DECAY + accepted

    def choose(self, batch: int) -> int:
        if not self.adaptive or batch == 0:
            self.last_k = self.k_max
            return self.k_max
        if not self.step.ready:
            return self.k_max
        best_k, best = 0, MARGIN / max(self.step.at(batch), 1e-9)
        for k in range(1, self.k_max + 1):
            cost = self.step.at(batch * (k + 1)) + k * self.draft.at(batch)
            rate = expected_tokens(self.alpha, k) / max(cost, 1e-9)
            if rate > best:
                best_k, best = k, rate
        self.last_k = best_k
        return best_k
