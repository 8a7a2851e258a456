"""Drives load levels against the endpoint: closed-loop users or open-loop arrivals, warm-up,
repeats, and the saturation sweep. Produces per-level summaries; writes nothing to disk.

Each level: scrape /metrics, start the loop monitor, send until --num-requests or --duration,
wait for stragglers, stop the monitor, scrape again, summarize."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from herd.bench.arrivals import arrival_offsets, arrivals_until
from herd.bench.client import OpenAIClient, scrape_text
from herd.bench.config import BenchConfig, Limits, Load
from herd.bench.metrics import summarize
from herd.bench.monitor import LoopMonitor, client_report
from herd.bench.request import Conversation, RequestOutput
from herd.bench.scrape import server_view
from herd.bench.tokenizer import Tokenizer
from herd.bench.workloads import Dataset
from herd.protocol.prometheus import parse_metrics

KEY_METRICS = (("throughput", "output_tokens_per_s"), ("throughput", "requests_per_s"),
               ("ttft_ms", "p50"), ("ttft_ms", "p99"), ("tpot_ms", "p50"), ("itl_ms", "p50"),
               ("e2e_ms", "p50"), ("e2e_ms", "p99"), ("goodput", "requests_per_s"))  # fmt: skip


@dataclass
class Budget:
    """Requests left in a level and its sending deadline; shared by all senders of the level."""

    remaining: float  # inf when the level is bounded by time only
    deadline: float  # perf_counter; inf when bounded by count only

    def take(self) -> bool:
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.remaining -= 1
        return True


class Runner:
    """Drives one load level against the target: closed-loop users or open-loop arrivals, multi-
    turn conversations whose history grows with the real replies, and a bounded budget of
    requests or time. Every request sent ends in exactly one `RequestOutput`."""

    def __init__(
        self, cfg: BenchConfig, client: OpenAIClient, dataset: Dataset, model: str, tok: Tokenizer
    ):
        self.cfg, self.client, self.dataset, self.model, self.tok = cfg, client, dataset, model, tok
        self._next_conv = (
            0  # conversations are never reused across levels: no cross-level cache hits
        )

    def _conversation(self) -> Conversation:
        conv = self.dataset.conversation(self._next_conv)
        self._next_conv += 1
        return conv

    async def _run_conversation(
        self, budget: Budget, sink: Callable[[RequestOutput], None]
    ) -> None:
        conv, history = self._conversation(), []
        for turn in conv.turns:
            if history and not budget.take():  # the first turn's take() happened in the caller
                return
            out = await self.client.send(self.model, history, turn)
            sink(out)
            if not out.ok:
                return  # a broken conversation cannot continue with a missing reply
            history += [
                {"role": "user", "content": turn.prompt},
                {"role": "assistant", "content": out.text},
            ]

    async def _closed_loop(self, users: int, budget: Budget, sink) -> None:
        async def user() -> None:
            while budget.take():
                await self._run_conversation(budget, sink)

        await asyncio.gather(*(user() for _ in range(users)))

    async def _open_loop(self, load: Load, limits: Limits, budget: Budget, sink, seed: int) -> None:
        if limits.num_requests:
            offsets = arrival_offsets(load.value, limits.num_requests, load.burstiness, seed)
        else:
            offsets = arrivals_until(load.value, limits.duration_s, load.burstiness, seed)
        gate = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
        start, tasks = time.perf_counter(), []

        async def arrive(scheduled: float) -> None:
            def stamp(out: RequestOutput) -> None:
                out.scheduled = scheduled
                sink(out)

            if gate is None:
                return await self._run_conversation(budget, stamp)
            async with gate:
                await self._run_conversation(budget, stamp)

        for offset in offsets:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if not budget.take():
                break
            tasks.append(asyncio.create_task(arrive(start + offset)))
        await asyncio.gather(*tasks)

    async def _send(self, load: Load, limits: Limits, sink, seed: int) -> None:
        budget = Budget(
            remaining=limits.num_requests or float("inf"),
            deadline=time.perf_counter() + limits.duration_s if limits.duration_s else float("inf"),
        )
        if load.kind == "concurrency":
            await self._closed_loop(int(load.value), budget, sink)
        else:
            await self._open_loop(load, limits, budget, sink, seed)

    async def warmup(self) -> int:
        """Requests whose results are thrown away: they open connections and warm the server."""
        n = self.cfg.limits.warmup
        if n:
            users = (
                self.cfg.loads[0].value
                if self.cfg.loads and self.cfg.loads[0].kind == "concurrency"
                else 4
            )
            await self._closed_loop(int(min(n, users)), Budget(n, float("inf")), lambda out: None)
        return n

    async def run_once(
        self, load: Load, seed: int
    ) -> tuple[list[RequestOutput], float, dict, dict | None]:
        session = self.client.session
        before = parse_metrics(await scrape_text(session, self.cfg.target.scrape_url))
        limits, outputs = self.cfg.limits, []
        bar = tqdm(total=limits.num_requests or None, desc=load.label, unit="req", leave=False,
                   disable=not self.cfg.progress)  # fmt: skip

        def sink(out: RequestOutput) -> None:
            outputs.append(out)
            bar.update(1)

        monitor = LoopMonitor()
        monitor.start()
        start = time.perf_counter()
        await self._send(load, limits, sink, seed)
        duration = time.perf_counter() - start
        loop_stats = await monitor.stop()
        bar.close()
        after = parse_metrics(await scrape_text(session, self.cfg.target.scrape_url))
        client = client_report(loop_stats, [o.client_overhead_s for o in outputs])
        delays = [o.start - o.scheduled for o in outputs if o.scheduled is not None]
        if delays:  # open loop: how late the client sent requests compared with the schedule
            client["send_delay_ms_p99"] = float(np.percentile(delays, 99) * 1000)
        return outputs, duration, client, server_view(before, after)

    async def run_level(self, load: Load) -> dict:
        pooled, total_s, repeats, client, server = [], 0.0, [], {}, None
        for rep in range(self.cfg.limits.repeats):
            outputs, duration, client, server = await self.run_once(
                load, seed=self.cfg.workload.seed + rep
            )
            summary = summarize(outputs, duration, self.cfg.slo, self.cfg.cost, self.tok)
            repeats.append({f"{a}.{b}": summary[a][b] for a, b in KEY_METRICS})
            pooled += outputs
            total_s += duration
        level = {"load": load_dict(load)}
        level.update(summarize(pooled, total_s, self.cfg.slo, self.cfg.cost, self.tok))
        if (
            server
            and server.get("prefix_cache_hit_rate") is not None
            and level["prefix_cache"]["hit_rate"] is None
        ):
            level["prefix_cache"] = {
                "hit_rate": server["prefix_cache_hit_rate"],
                "source": "metrics",
            }
        level.update(client=client, server=server, repeats=repeats, saturated=False)
        return level


def load_dict(load: Load) -> dict:
    out = {"kind": load.kind, "value": load.value}
    if load.kind == "rate":
        out.update(burstiness=load.burstiness, max_concurrency=load.max_concurrency)
    return out


def is_saturated(previous: dict | None, level: dict, min_gain: float, max_error_rate: float) -> str:
    """Why `level` shows saturation ("" if it does not): errors, or too little added throughput."""
    reqs = level["requests"]
    total = reqs["ok"] + reqs["failed"]
    if total and reqs["failed"] / total > max_error_rate:
        return f"error rate {reqs['failed'] / total:.0%}"
    if previous is None:
        return ""
    before = previous["throughput"]["output_tokens_per_s"]
    now = level["throughput"]["output_tokens_per_s"]
    if before > 0 and now < before * (1 + min_gain):
        return f"throughput grew {now / before - 1:+.0%} (< {min_gain:.0%})"
    return ""


async def run_levels(
    runner: Runner, on_level: Callable[[dict], None] = lambda lv: None
) -> list[dict]:
    """The fixed list of levels, or with --sweep doubling the load until saturation."""
    cfg, levels = runner.cfg, []
    await runner.warmup()
    if not cfg.sweep.enabled:
        for load in cfg.loads:
            levels.append(await runner.run_level(load))
            on_level(levels[-1])
        return levels
    value = cfg.sweep.start
    while value <= cfg.sweep.max_value:
        level = await runner.run_level(Load(cfg.sweep.kind, value))
        reason = is_saturated(
            levels[-1] if levels else None, level, cfg.sweep.min_gain, cfg.sweep.max_error_rate
        )
        levels.append(level)
        on_level(level)
        if reason:
            level["saturated"], level["saturation_reason"] = True, reason
            break
        value *= 2
    return levels
