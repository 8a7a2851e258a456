"""Recent traffic as an autoscaler reads it: when the last request arrived and how many recent
requests met the time-to-first-token objective. The gateway writes it; nothing here decides."""

from __future__ import annotations

import time
from collections import deque


class LoadTracker:
    """Arrival time of the last request and the first-token latencies of the last `window_s`
    seconds. Promises O(1) writes and reads bounded by the window's traffic."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self.last_arrival: float | None = None
        self._ttfts: deque[tuple[float, float]] = deque()  # (monotonic time, ttft seconds)

    def arrived(self, now: float | None = None) -> None:
        self.last_arrival = time.monotonic() if now is None else now

    def first_token(self, ttft_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._ttfts.append((now, ttft_s))
        self._trim(now)

    def idle_s(self, now: float | None = None) -> float:
        """Seconds since the last request arrived (infinite before the first)."""
        if self.last_arrival is None:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.last_arrival

    def attainment(self, slo_s: float, now: float | None = None) -> float | None:
        """Share of the window's requests whose first token came within `slo_s`; None if none."""
        self._trim(time.monotonic() if now is None else now)
        if not self._ttfts:
            return None
        return sum(1 for _, t in self._ttfts if t <= slo_s) / len(self._ttfts)

    def _trim(self, now: float) -> None:
        while self._ttfts and self._ttfts[0][0] < now - self.window_s:
            self._ttfts.popleft()
