"""Honesty checks on the client itself: event-loop lag, CPU use and parsing overhead.

If the load generator is the bottleneck, its latencies describe the client, not the server;
this module measures that and turns it into warnings stored next to the results."""

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

LAG_WARN_MS = 20.0  # p99 lag above this skews latencies by about as much
CPU_WARN = 0.85  # asyncio runs on one core: near 100% means requests wait on us


@dataclass
class LoopMonitor:
    """Watches the benchmark client itself: event-loop lag (sampled every `interval_s`) and process
    CPU. A lagging loop means the client, not the server, set the latency, and the results say
    so."""

    interval_s: float = 0.01
    lags_s: list[float] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _wall0: float = 0.0
    _cpu0: float = 0.0

    async def _probe(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.lags_s.append(max(0.0, time.perf_counter() - before - self.interval_s))

    def start(self) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self._task = asyncio.get_running_loop().create_task(self._probe())

    async def stop(self) -> dict:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        wall = max(1e-9, time.perf_counter() - self._wall0)
        lags = np.asarray(self.lags_s or [0.0]) * 1000
        return {
            "loop_lag_ms_p50": float(np.percentile(lags, 50)),
            "loop_lag_ms_p99": float(np.percentile(lags, 99)),
            "loop_lag_ms_max": float(lags.max()),
            # process CPU includes the tokenizer and any in-process test server; an upper bound.
            "cpu_fraction": (time.process_time() - self._cpu0) / wall,
        }


def client_report(loop_stats: dict, overheads_s: list[float]) -> dict:
    report = dict(loop_stats)
    report["overhead_ms_per_request"] = float(np.mean(overheads_s) * 1000) if overheads_s else 0.0
    warnings = []
    if report["loop_lag_ms_p99"] > LAG_WARN_MS:
        warnings.append(
            f"client event loop lagged {report['loop_lag_ms_p99']:.0f} ms at p99: latencies include "
            "client delay; lower the load per client or run several bench processes"
        )
    if report["cpu_fraction"] > CPU_WARN:
        warnings.append(
            f"client used {report['cpu_fraction']:.0%} of a core: the client may be the bottleneck"
        )
    report["bottleneck"] = bool(warnings)
    report["warnings"] = warnings
    return report
