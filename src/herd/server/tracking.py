"""Per-request latency bookkeeping for the server's histograms and finish-reason counter."""

import time

from herd.engine.outputs import RequestOutput
from herd.server.metrics import ServerMetrics


class Tracker:
    """Observes one request's deltas as they leave the engine: TTFT once, inter-token latency per
    completion (a delta of k tokens counts k gaps of equal share), queue time, E2E on close.
    Completions still open at close (client gone, drain timeout) count as finish_reason abort."""

    def __init__(self, metrics: ServerMetrics, arrival: float, n: int = 1) -> None:
        self.open = set(range(n))  # completion indices not finished yet
        self.metrics = metrics
        self.arrival = arrival
        self.first_token: float | None = None
        self.last: dict[int, float] = {}  # completion index -> time of its previous delta
        self.queue_seen = False

    def observe(self, out: RequestOutput) -> None:
        now = time.monotonic()
        m = self.metrics
        if not self.queue_seen and out.metrics is not None and out.metrics.queue_time is not None:
            self.queue_seen = True
            m.queue_time.observe(out.metrics.queue_time)
        for delta in out.outputs:
            k = len(delta.token_ids)
            if k:
                if self.first_token is None:
                    self.first_token = now
                    m.ttft.observe(now - self.arrival)
                prev = self.last.get(delta.index)
                if prev is not None:
                    for _ in range(k):
                        m.itl.observe((now - prev) / k)
                self.last[delta.index] = now
            if delta.finish_reason is not None and delta.index in self.open:
                self.open.discard(delta.index)
                m.success.labels(delta.finish_reason).inc()

    def close(self) -> None:
        if self.open:
            self.metrics.success.labels("abort").inc(len(self.open))
        if self.first_token is not None:
            self.metrics.e2e.observe(time.monotonic() - self.arrival)
