"""`herd bench run` and `herd bench compare`: measure any OpenAI-compatible endpoint and set
runs side by side. Flags map one to one onto herd.bench.config dataclasses; bad flags and an
unreachable endpoint end in a one-line error (exit 2)."""

import argparse
import asyncio
import math
import os
import sys

from herd.cli import CliError


def csv_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None

    return parse


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse prints usage plus the error; herd prints one line and exits 2."""

    def error(message: str):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = error
    return parser


def register(subparsers) -> None:
    bench = one_line_errors(
        subparsers.add_parser("bench", help="benchmark an OpenAI-compatible endpoint")
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="{run,compare}")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    _add_run(one_line_errors(sub.add_parser("run", help="run load levels and write reports")))
    _add_compare(one_line_errors(sub.add_parser("compare", help="compare saved runs side by side")))


def _add_run(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("target")
    t.add_argument(
        "--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1"
    )
    t.add_argument("--model", default="", help="model id (default: the first one /models lists)")
    t.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", ""),
        help="bearer key ($OPENAI_API_KEY)",
    )
    t.add_argument(
        "--endpoint", choices=["chat", "completions"], default="chat", help="API to call"
    )
    t.add_argument("--no-stream", action="store_true", help="non-streaming requests (TTFT = E2E)")
    t.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    t.add_argument(
        "--ignore-eos", action="store_true", help="send ignore_eos (vLLM/SGLang extension)"
    )
    t.add_argument(
        "--metrics-url", default="", help="Prometheus /metrics URL (default: next to base URL)"
    )
    t.add_argument("--temperature", type=float, default=0.0, help="sampling temperature")
    lo = p.add_argument_group("load")
    lo.add_argument(
        "--concurrency", type=csv_list(int), default=[], help="closed-loop users per level: 1,4,16"
    )
    lo.add_argument(
        "--rate",
        type=csv_list(float),
        default=[],
        help="open-loop Poisson rates per level (req/s; inf)",
    )
    lo.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape: 1 Poisson, <1 burstier"
    )
    lo.add_argument(
        "--max-concurrency", type=int, default=0, help="open loop: cap on requests in flight"
    )
    lo.add_argument("--sweep", nargs="?", const="concurrency", choices=["concurrency", "rate"],
                    help="double the load until saturation")  # fmt: skip
    lo.add_argument("--sweep-start", type=float, default=1.0, help="first sweep level")
    lo.add_argument("--sweep-max", type=float, default=1024.0, help="last sweep level at most")
    lo.add_argument(
        "--sweep-min-gain", type=float, default=0.10, help="throughput gain below this = saturated"
    )
    lo.add_argument("--num-requests", type=int, default=0, help="requests per level (default 100)")
    lo.add_argument("--duration", type=float, default=0.0, help="seconds of sending per level")
    lo.add_argument("--warmup", type=int, default=0, help="warm-up requests, excluded from results")
    lo.add_argument(
        "--repeats", type=int, default=1, help="runs per level, for confidence intervals"
    )
    w = p.add_argument_group("workload")
    w.add_argument(
        "--workload",
        choices=["synthetic", "shared-prefix", "multi-turn", "jsonl"],
        default="synthetic",
    )
    w.add_argument(
        "--input-len", type=int, default=128, help="prompt tokens (suffix for shared-prefix)"
    )
    w.add_argument("--output-len", type=int, default=128, help="max_tokens per request")
    w.add_argument("--length-dist", choices=["fixed", "uniform", "normal"], default="fixed")
    w.add_argument(
        "--length-spread", type=float, default=0.25, help="relative spread for uniform/normal"
    )
    w.add_argument("--num-groups", type=int, default=4, help="shared-prefix: groups")
    w.add_argument("--prefix-len", type=int, default=512, help="shared-prefix: tokens per prefix")
    w.add_argument("--turns", type=int, default=4, help="multi-turn: turns per conversation")
    w.add_argument("--dataset", default="", help="jsonl: file with prompt or messages per line")
    w.add_argument("--seed", type=int, default=0, help="dataset seed")
    w.add_argument("--same-prompts", action="store_true", help="do not salt prompts per run")
    w.add_argument("--tokenizer", default="", help="HF tokenizer name/path for lengths and counts")
    r = p.add_argument_group("SLO, cost and output")
    r.add_argument("--slo", default="", help="e.g. ttft=500ms,tpot=50ms (also itl=, e2e=)")
    r.add_argument("--gpus", type=int, default=1, help="GPUs behind the endpoint (for cost)")
    r.add_argument("--gpu-hour-cost", type=float, help="$ per GPU-hour")
    r.add_argument("--label", default="", help="name of this run in reports and compare")
    r.add_argument("--output-dir", help="write results.json, CSV, Markdown, PNG and HTML here")
    r.add_argument("--no-plots", action="store_true", help="skip PNG and HTML")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle_run)


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="results.json files (or directories holding one)")
    p.add_argument("--labels", type=csv_list(str), help="rename the runs, in order")
    p.add_argument("--pool", action="store_true", help="files with the same label are repeats")
    p.add_argument("--output-dir", help="write compare.json, compare.md, PNGs and compare.html")
    p.set_defaults(func=handle_compare)


def build_config(args):
    from herd.bench import config as c

    loads = [c.Load("concurrency", n) for n in args.concurrency]
    loads += [c.Load("rate", r, args.burstiness, args.max_concurrency) for r in args.rate]
    if any(n < 1 for n in args.concurrency) or any(r <= 0 or math.isnan(r) for r in args.rate):
        raise c.BenchConfigError("--concurrency values must be >= 1 and --rate values > 0")
    workload = c.Workload(
        kind=args.workload, input_len=args.input_len, output_len=args.output_len,
        length_dist=args.length_dist, length_spread=args.length_spread, num_groups=args.num_groups,
        prefix_len=args.prefix_len, turns=args.turns, dataset=args.dataset, seed=args.seed,
        unique=not args.same_prompts, tokenizer=args.tokenizer,
    )  # fmt: skip
    target = c.Target(
        base_url=args.base_url, model=args.model, api_key=args.api_key, endpoint=args.endpoint,
        stream=not args.no_stream, timeout_s=args.timeout, ignore_eos=args.ignore_eos,
        metrics_url=args.metrics_url, temperature=args.temperature,
    )  # fmt: skip
    num_requests = args.num_requests or (0 if args.duration else 100)
    return c.BenchConfig(
        target=target,
        limits=c.Limits(num_requests, args.duration, args.warmup, args.repeats),
        workload=workload,
        loads=tuple(loads),
        sweep=c.Sweep(
            bool(args.sweep),
            args.sweep or "concurrency",
            args.sweep_start,
            args.sweep_max,
            args.sweep_min_gain,
        ),  # fmt: skip
        slo=c.Slo.parse(args.slo),
        cost=c.Cost(args.gpus, args.gpu_hour_cost),
        label=args.label,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def handle_run(args) -> int:
    from herd.bench.client import EndpointError
    from herd.bench.config import BenchConfigError
    from herd.bench.reports import level_row, terminal_table, write_reports
    from herd.bench.run import run_benchmark

    try:
        cfg = build_config(args)
    except BenchConfigError as exc:
        raise CliError(str(exc)) from None

    def on_level(level: dict) -> None:
        row = level_row(level)
        print(f"  {row[0]}: {row[1]} ok, {row[2]} failed, {row[4]:.1f} out tok/s", file=sys.stderr)

    try:
        results, dataset = asyncio.run(run_benchmark(cfg, on_level))
    except (EndpointError, BenchConfigError) as exc:
        raise CliError(str(exc)) from None
    print(terminal_table(results))
    if args.output_dir:
        paths = write_reports(results, args.output_dir, plots=not args.no_plots)
        dataset.save(paths["json"].parent / "dataset.jsonl")
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def handle_compare(args) -> int:
    from herd.bench.compare import compare_runs, render, write_compare
    from herd.bench.results import ResultsError, load_results

    try:
        runs = [load_results(path) for path in args.runs]
    except ResultsError as exc:
        raise CliError(str(exc)) from None
    if args.labels:
        if len(args.labels) != len(runs):
            raise CliError(f"--labels has {len(args.labels)} names for {len(runs)} runs")
        for run, label in zip(runs, args.labels, strict=True):
            run["label"] = label
    result = compare_runs(runs, pool=args.pool)
    if len(result["labels"]) < 2:
        raise CliError("compare needs at least two runs (or two labels with --pool)")
    print(render(result))
    if args.output_dir:
        paths = write_compare(runs, result, args.output_dir, pool=args.pool)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
