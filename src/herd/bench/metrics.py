"""Metric arithmetic on recorded timelines: TTFT, inter-token latency, TPOT, end-to-end,
throughput, goodput under an SLO and cost per million tokens.

Pure functions of RequestOutput lists, so tests can feed synthetic timelines. Token counts
come from the server's `usage`; without it, from the tokenizer, and the summary says which."""

from dataclasses import dataclass, field

import numpy as np

from herd.bench.config import Cost, Slo
from herd.bench.request import RequestOutput
from herd.bench.tokenizer import Tokenizer

PCTS = (50, 90, 99)


def distribution(values_s: list[float]) -> dict:
    """mean, p50, p90, p99 and max, in milliseconds (None when there are no values)."""
    if not values_s:
        return {"mean": None, **{f"p{p}": None for p in PCTS}, "max": None}
    arr = np.asarray(values_s, dtype=float) * 1000.0
    out = {"mean": float(arr.mean())}
    out.update({f"p{p}": float(np.percentile(arr, p)) for p in PCTS})
    out["max"] = float(arr.max())
    return out


def chunk_tokens(total: int, chunk_chars: list[int]) -> list[int]:
    """Spread `total` output tokens over the chunks that carried them.

    One token per chunk when the counts match (the usual case); otherwise in proportion to each
    chunk's characters, by largest remainder so the counts add up exactly."""
    n = len(chunk_chars)
    if n == 0:
        return []
    if total == n:
        return [1] * n
    weights = np.asarray(chunk_chars, dtype=float)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(n, 1.0 / n)
    raw = weights * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def itl_samples(chunk_times: list[float], tokens: list[int]) -> list[float]:
    """Inter-token latencies: a chunk of k tokens after a gap g gives k samples of g/k.

    The first chunk's tokens belong to TTFT, not ITL. Counting a multi-token chunk as one
    sample would overstate ITL by k and understate the number of tokens behind it."""
    samples: list[float] = []
    for i in range(1, len(chunk_times)):
        k = tokens[i]
        if k > 0:
            samples.extend([(chunk_times[i] - chunk_times[i - 1]) / k] * k)
    return samples


@dataclass
class RequestMetrics:
    """The latencies of one finished request, in seconds (TTFT, E2E, TPOT, every inter-token gap)
    and its token counts: the pure per-request numbers that level statistics are computed from."""

    ttft: float | None
    e2e: float
    tpot: float | None  # (e2e - ttft) / (output tokens - 1)
    itl: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None


def request_metrics(out: RequestOutput, tok: Tokenizer | None) -> tuple[RequestMetrics, str]:
    """Per-request figures and where its token counts came from ("usage" or tokenizer kind)."""
    source = "usage"
    n_out = out.completion_tokens
    if n_out is None:
        n_out, source = _count(tok, out.text), (tok.kind if tok else "approx")
    n_in = out.prompt_tokens if out.prompt_tokens is not None else out.expected_input_tokens
    tokens = chunk_tokens(n_out, out.chunk_chars)
    ttft = out.ttft
    tpot = (out.e2e - ttft) / (n_out - 1) if ttft is not None and n_out > 1 else None
    rm = RequestMetrics(
        ttft, out.e2e, tpot, itl_samples(out.chunk_times, tokens), n_in, n_out, out.cached_tokens
    )
    return rm, source


def _count(tok: Tokenizer | None, text: str) -> int:
    return tok.count(text) if tok else len(text.split())


def meets_slo(m: RequestMetrics, slo: Slo) -> bool:
    checks = [
        (slo.ttft_ms, m.ttft),
        (slo.tpot_ms, m.tpot),
        (slo.itl_ms, float(np.percentile(m.itl, 99)) if m.itl else None),
        (slo.e2e_ms, m.e2e),
    ]
    return all(
        value is not None and value * 1000 <= limit for limit, value in checks if limit is not None
    )


def cost_per_million(tokens_per_s: float, cost: Cost) -> float | None:
    """$ per million tokens when the GPUs behind the endpoint deliver `tokens_per_s`."""
    if cost.gpu_hour_cost is None or tokens_per_s <= 0:
        return None
    return cost.gpus * cost.gpu_hour_cost / 3600.0 / tokens_per_s * 1e6


def summarize(
    outputs: list[RequestOutput], duration_s: float, slo: Slo, cost: Cost, tok=None
) -> dict:
    """The per-level summary stored in results.json (SCHEMA.md describes each field)."""
    ok = [o for o in outputs if o.ok]
    failed: dict[str, int] = {}
    for o in outputs:
        if not o.ok:
            failed[o.error] = failed.get(o.error, 0) + 1
    pairs = [request_metrics(o, tok) for o in ok]
    ms = [m for m, _ in pairs]
    sources = sorted({s for _, s in pairs})
    duration_s = max(duration_s, 1e-9)
    n_in, n_out = sum(m.input_tokens for m in ms), sum(m.output_tokens for m in ms)
    good = sum(meets_slo(m, slo) for m in ms) if slo.active else None
    cached = [m for m in ms if m.cached_tokens is not None]
    throughput = {
        "requests_per_s": len(ok) / duration_s,
        "input_tokens_per_s": n_in / duration_s,
        "output_tokens_per_s": n_out / duration_s,
        "total_tokens_per_s": (n_in + n_out) / duration_s,
    }
    return {
        "duration_s": duration_s,
        "requests": {"ok": len(ok), "failed": len(outputs) - len(ok), "failed_by_reason": failed},
        "ttft_ms": distribution([m.ttft for m in ms if m.ttft is not None]),
        "itl_ms": distribution([s for m in ms for s in m.itl]),
        "tpot_ms": distribution([m.tpot for m in ms if m.tpot is not None]),
        "e2e_ms": distribution([m.e2e for m in ms]),
        "tokens": {"input": n_in, "output": n_out, "source": "+".join(sources) or None},
        "throughput": throughput,
        "goodput": {
            "requests_per_s": None if good is None else good / duration_s,
            "fraction": None if good is None or not outputs else good / len(outputs),
        },
        "prefix_cache": {
            "hit_rate": sum(m.cached_tokens for m in cached)
            / max(1, sum(m.input_tokens for m in cached))
            if cached
            else None,
            "source": "usage" if cached else None,
        },
        "cost": {
            "usd_per_million_output_tokens": cost_per_million(
                throughput["output_tokens_per_s"], cost
            ),
            "usd_per_million_total_tokens": cost_per_million(
                throughput["total_tokens_per_s"], cost
            ),
        },
        "samples": {  # per request, for confidence intervals in `herd bench compare`
            "ttft_ms": [round(m.ttft * 1000, 3) for m in ms if m.ttft is not None],
            "tpot_ms": [round(m.tpot * 1000, 3) for m in ms if m.tpot is not None],
            "e2e_ms": [round(m.e2e * 1000, 3) for m in ms],
        },
    }
