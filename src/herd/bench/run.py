"""Entry point for a whole benchmark run: tokenizer, dataset, endpoint check, levels, results.

`run_benchmark(cfg)` is what `herd bench run` calls; tests call it directly."""

from collections.abc import Callable

from herd.bench.client import OpenAIClient
from herd.bench.config import BenchConfig
from herd.bench.results import build_results
from herd.bench.runner import Runner, run_levels
from herd.bench.tokenizer import load_tokenizer
from herd.bench.workloads import Dataset, build_dataset

DURATION_POOL = 1000  # conversations generated for duration-bounded runs (then cycled, re-salted)


def dataset_size(cfg: BenchConfig) -> int:
    if not cfg.limits.num_requests:
        return DURATION_POOL
    levels = len(cfg.loads) if not cfg.sweep.enabled else 1
    # One pool covers every level and repeat, so each request of the run has its own prompt.
    return cfg.limits.num_requests * levels * cfg.limits.repeats + cfg.limits.warmup


async def run_benchmark(
    cfg: BenchConfig, on_level: Callable[[dict], None] = lambda lv: None
) -> tuple[dict, Dataset]:
    tok = load_tokenizer(cfg.workload.tokenizer, cfg.target.model)
    async with OpenAIClient(cfg.target) as client:
        model = await client.preflight()
        if tok.kind == "approx" and not cfg.workload.tokenizer:
            tok = load_tokenizer("", model)  # the served model id may name a local tokenizer
        dataset = build_dataset(cfg.workload, tok, dataset_size(cfg))
        runner = Runner(cfg, client, dataset, model, tok)
        levels = await run_levels(runner, on_level)
    tokenizer = {"name": tok.name, "kind": tok.kind, "note": tok.note}
    return build_results(cfg, model, dataset.describe(), tokenizer, levels), dataset
