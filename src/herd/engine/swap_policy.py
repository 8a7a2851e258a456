"""`SwapPolicy`: for KV blocks found in a host or disk tier, is copying them back into the device
pool cheaper than recomputing their tokens? Both sides are measured: the copy as a fixed latency
plus a per-block time per tier (at start-up, then an EWMA of every restore), the recompute as the
engine's step time per token (an EWMA of steps that computed at least a block of tokens)."""

from dataclasses import dataclass, field

MODES = ("auto", "swap", "recompute")
EWMA = 0.2  # weight of a new measurement


@dataclass
class CopyCost:
    """Measured time to copy blocks out of one tier into the device pool: `latency_s` per
    restore (however many blocks) plus `per_block_s` per block."""

    latency_s: float = 0.0
    per_block_s: float = 0.0

    def seconds(self, blocks: int) -> float:
        return self.latency_s + blocks * self.per_block_s


@dataclass
class SwapPolicy:
    """Decides restore vs recompute for one request's run of tier hits (`should_restore`).
    `mode` "swap" always restores and "recompute" never does (tests and benchmarks pin it);
    "auto" compares the measured costs, and restores until a prefill cost has been measured
    (a copy is almost always the cheaper side). Promises only to read measurements: it never
    touches blocks."""

    block_size: int
    mode: str = "auto"
    copy: dict[str, CopyCost] = field(default_factory=dict)  # tier name -> restore cost
    token_s: float | None = None  # EWMA of step seconds per computed token
    restored_blocks: int = 0  # decisions made, in blocks
    recomputed_blocks: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"kv_swap_policy must be one of {', '.join(MODES)}; got {self.mode!r}")

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        """One engine step: `num_tokens` computed in `seconds`. Decode-only steps (fewer tokens
        than a block) say little about prefill and are skipped."""
        if num_tokens < self.block_size or seconds <= 0:
            return
        per = seconds / num_tokens
        self.token_s = per if self.token_s is None else (1 - EWMA) * self.token_s + EWMA * per

    def observe_restore(self, tier: str, blocks: int, seconds: float) -> None:
        """One measured restore of `blocks` blocks from `tier`: updates its per-block time
        (the start-up latency stays as the fixed part)."""
        cost = self.copy.setdefault(tier, CopyCost())
        per = max(0.0, seconds - cost.latency_s) / max(1, blocks)
        cost.per_block_s = (1 - EWMA) * cost.per_block_s + EWMA * per

    def restore_seconds(self, hits: dict[str, int]) -> float:
        return sum(self.copy.get(t, CopyCost()).seconds(n) for t, n in hits.items() if n)

    def recompute_seconds(self, blocks: int) -> float | None:
        return None if self.token_s is None else blocks * self.block_size * self.token_s

    def should_restore(self, hits: dict[str, int]) -> bool:
        """`hits`: tier name -> blocks of one request found there (a leading run of its
        prefix). Records the decision in the counters."""
        blocks = sum(hits.values())
        if self.mode == "auto":
            recompute = self.recompute_seconds(blocks)
            restore = recompute is None or self.restore_seconds(hits) < recompute
        else:
            restore = self.mode == "swap"
        if restore:
            self.restored_blocks += blocks
        else:
            self.recomputed_blocks += blocks
        return restore
