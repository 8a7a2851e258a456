"""Active health: probe each replica's /ready, re-admit ejected ones, scrape /metrics.

Runs as one asyncio task on the gateway's HTTP session. Metric names of herd and vLLM replicas
are both understood; a replica without /metrics is simply not scraped again."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from herd.gateway.background import BackgroundTask
from herd.gateway.config import HealthConfig
from herd.gateway.replicas import Replica, ReplicaSet, ReplicaState
from herd.protocol.prometheus import parse_metrics

# Reported field -> metric names that feed it (herd first, then vLLM v1 and v0 spellings).
METRIC_NAMES = {
    "num_running": ("herd_num_requests_running", "vllm:num_requests_running"),
    "num_waiting": ("herd_num_requests_waiting", "vllm:num_requests_waiting"),
    "kv_usage": (
        "herd_kv_cache_usage_ratio",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    ),
    "prefix_queries": (
        "herd_prefix_cache_queries_total",
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
    ),
    "prefix_hits": (
        "herd_prefix_cache_hits_total",
        "vllm:prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits_total",
    ),
    "generation_tokens": ("herd_generation_tokens_total", "vllm:generation_tokens_total"),
}


def apply_metrics(replica: Replica, samples: dict[str, float]) -> None:
    rep = replica.reported
    for attr, names in METRIC_NAMES.items():
        for name in names:
            if name in samples:
                setattr(rep, attr, samples[name])
                break
    rep.scraped_at = time.monotonic()


class HealthChecker(BackgroundTask):
    """The background task that probes every replica's /ready, moves replicas between loading,
    ready, draining and ejected (re-admitting ejected ones after their backoff), and scrapes
    /metrics for the load and prefix-cache counters replicas report."""

    task_name = "herd-health"

    def __init__(self, replicas: ReplicaSet, session: aiohttp.ClientSession, config: HealthConfig):
        self.replicas = replicas
        self.session = session
        self.config = config

    async def _run(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.config.interval_s)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas.all()), return_exceptions=True)

    async def check(self, replica: Replica) -> None:
        """One probe; DOWN replicas belong to the supervisor and are left alone."""
        state = replica.state
        if state is ReplicaState.DOWN or replica.locked:
            return
        if state is ReplicaState.EJECTED and time.monotonic() < replica.observed.ejected_until:
            return
        status = await self._probe(replica.url + "/ready")
        if status == 200:
            self.replicas.set_state(replica.url, ReplicaState.READY)
            if self.config.scrape_metrics and replica.reported.has_metrics is not False:
                await self.scrape(replica)
        elif status is not None and status < 500 and status != 404:
            self.replicas.record_failure(replica)
        elif status == 404:
            # No /ready (some servers): fall back to /health for liveness.
            if await self._probe(replica.url + "/health") == 200:
                self.replicas.set_state(replica.url, ReplicaState.READY)
        elif status is not None:
            # 503: alive but not taking work: draining if it served before, else still loading.
            if state is ReplicaState.EJECTED:
                self.replicas.eject(replica)
            elif state is not ReplicaState.DRAINING:
                was_ready = replica.observed.ever_ready
                self.replicas.set_state(
                    replica.url, ReplicaState.DRAINING if was_ready else ReplicaState.LOADING
                )
        elif state is ReplicaState.EJECTED:
            self.replicas.eject(replica)  # still unreachable: back off longer
        elif state is ReplicaState.READY:
            self.replicas.record_failure(replica)

    async def _probe(self, url: str) -> int | None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            async with self.session.get(url, timeout=timeout) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def scrape(self, replica: Replica) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
            async with self.session.get(replica.url + "/metrics", timeout=timeout) as resp:
                if resp.status != 200:
                    replica.reported.has_metrics = False if resp.status == 404 else None
                    return
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            return
        replica.reported.has_metrics = True
        apply_metrics(replica, parse_metrics(text))
