"""`herd autoscale simulate`: replay an arrival trace through the autoscaler's policy with replicas
modelled from a `herd bench` result, and compare it with a static fleet sized for the peak.

`add_autoscale_args` / `autoscale_config` are the autoscaler's flags, written once here: any
command that takes autoscaling settings (this one, `herd serve --autoscale`) uses them, and a flag
given wins over the `[autoscale]` table of `--config`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields, replace

from herd.cli import CliError
from herd.cli.bench_cmds import one_line_errors

# AutoscaleConfig field -> help; the flag is the field's name without `_s`, dashed.
AUTOSCALE_FLAGS = {
    "min_replicas": "never fewer replicas (0 allows scale to zero)",
    "max_replicas": "never more replicas",
    "target_load": "requests in flight (running + queued) one replica should carry",
    "tolerance": "scale down only while the rest would carry <= (1 - this) x target load",
    "warm_pool": "replicas kept above current demand, to absorb a burst",
    "standby": "replicas kept loaded but unrouted, promoted at once",
    "idle_timeout_s": "with --min-replicas 0: seconds without a request before scaling to zero",
    "scale_up_window_s": "scale up to the lowest recommendation over this many seconds",
    "scale_down_window_s": "scale down to the highest recommendation over this many seconds",
    "cooldown_s": "seconds after any change with no scale-down",
    "flap_hold_s": "after a scale-down is undone within the down window, stay at or above the size it left for this long",
    "max_scale_up_step": "most replicas added by one decision",
    "max_scale_down_step": "most replicas removed by one decision",
    "interval_s": "seconds between decisions",
    "ttft_slo_s": "a first token later than this many seconds misses the SLO",
    "slo_attainment_target": "below this share of requests within the TTFT SLO, add a replica",
    "slo_window_s": "TTFT attainment window; saturation counts once ready replicas held this long",
    "kv_usage_high": "replicas' mean KV usage above this counts as saturated",
    "cold_start_wait_s": "at zero replicas a request waits this long for one, then 503",
}


def _flag(name: str) -> str:
    return "--" + name.removesuffix("_s").replace("_", "-")


def add_autoscale_args(parser: argparse.ArgumentParser) -> None:
    """One flag per autoscaler setting, absent from the namespace unless given."""
    from herd.fleet.config import AutoscaleConfig

    types = {f.name: type(f.default) for f in fields(AutoscaleConfig)}
    group = parser.add_argument_group("autoscaler (override the [autoscale] table of --config)")
    for name, text in AUTOSCALE_FLAGS.items():
        default = getattr(AutoscaleConfig, name)
        metavar = "S" if name.endswith("_s") else "N" if types[name] is int else "X"
        group.add_argument(_flag(name), dest=f"autoscale_{name}", type=types[name], metavar=metavar,
                           default=argparse.SUPPRESS, help=f"{text} (default: {default:g})")  # fmt: skip


def autoscale_config(args: argparse.Namespace, base):
    """`base` (an AutoscaleConfig, from the config file) with the flags given applied; an invalid
    combination is a `CliError`."""
    from herd.fleet.config import ConfigError

    given = {n: getattr(args, f"autoscale_{n}") for n in AUTOSCALE_FLAGS if hasattr(args, f"autoscale_{n}")}  # fmt: skip
    try:
        return replace(base, **given)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def register(subparsers) -> None:
    p = one_line_errors(subparsers.add_parser("autoscale", help="autoscaler tools"))
    sub = p.add_subparsers(dest="autoscale_command", metavar="{simulate}")
    s = one_line_errors(
        sub.add_parser("simulate", help="replay a trace through the autoscaler, against a bench")
    )
    s.add_argument("--trace", required=True, help="CSV of time_s,requests_per_s (see docs)")
    s.add_argument("--bench", required=True, help="`herd bench run` results.json of one replica")
    s.add_argument("--cold-start-s", type=float, default=30.0, help="seconds to start a replica")
    s.add_argument("--png", help="write load, replicas and queue over time to this PNG")
    s.add_argument("--config", help="TOML or YAML file; its [autoscale] table is read")
    s.add_argument("--cost-per-replica-hour", type=float, default=1.0, help="$ per replica-hour")
    s.add_argument("--rate-scale", type=float, default=1.0, help="multiply the trace's rates")
    s.add_argument("--ttft-percentile", default="p50", choices=["mean", "p50", "p90", "p99"],
                   help="bench TTFT statistic the replica model uses")  # fmt: skip
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    add_autoscale_args(s)
    s.set_defaults(func=handle_simulate)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def _inputs(args: argparse.Namespace):
    from herd.fleet.config import ConfigError, load_serve_config
    from herd.fleet.replica_model import fit_replica_model, load_bench_json
    from herd.fleet.traces import read_trace

    if args.rate_scale <= 0 or args.cold_start_s < 0 or args.cost_per_replica_hour < 0:
        raise CliError("--rate-scale must be > 0, --cold-start-s and the cost >= 0")
    try:
        config = autoscale_config(args, load_serve_config(args.config).autoscale)
        trace = read_trace(args.trace).scaled(args.rate_scale)
        model = fit_replica_model(load_bench_json(args.bench), args.ttft_percentile)
    except (ConfigError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return config, trace, model


def handle_simulate(args: argparse.Namespace) -> int:
    from herd.fleet.autoscale_sim import compare

    config, trace, model = _inputs(args)

    def progress(done: float, total: float) -> None:
        print(f"simulated {done:,.0f} / {total:,.0f} s", file=sys.stderr, flush=True)

    auto, static = compare(trace, model, config, args.cold_start_s, progress=progress)
    if args.png:
        from herd.fleet.autoscale_plot import plot_simulation

        plot_simulation(auto, static, args.png)
    if args.json:
        print(json.dumps(_summary(args, config, model, trace, auto, static), indent=2))
    else:
        print(_render(args, model, trace, auto, static, config.ttft_slo_s))
    if args.png:
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _row(result, cost_per_hour: float) -> dict:
    return {
        "name": result.name,
        "slo_attainment": result.slo_attainment,
        "requests": result.arrived,
        "unserved": result.unserved,
        "replica_seconds": result.replica_seconds,
        "replica_hours": result.replica_seconds / 3600,
        "cost": result.cost(cost_per_hour),
        "peak_replicas": result.peak_replicas,
        "decisions": result.decisions,
    }


def _summary(args, config, model, trace, auto, static) -> dict:
    return {
        "trace": {"path": args.trace, "duration_s": trace.duration_s, "peak_rps": trace.peak_rps},
        "model": {
            "label": model.label,
            "capacity_rps": model.capacity_rps(config.ttft_slo_s),
            "max_concurrency": model.max_concurrency,
        },  # fmt: skip
        "cold_start_s": args.cold_start_s,
        "autoscale": asdict(config),
        "runs": [_row(r, args.cost_per_replica_hour) for r in (auto, static)],
    }


def _render(args, model, trace, auto, static, slo_s: float) -> str:
    from herd.bench.tables import text_table

    head = (
        f"trace {args.trace}: {trace.duration_s:,.0f} s, peak {trace.peak_rps:.2f} req/s; "
        f"one replica ({model.label}) sustains {model.capacity_rps(slo_s):.2f} req/s within "
        f"TTFT {slo_s:g} s, up to {model.max_concurrency:g} in flight; cold start "
        f"{args.cold_start_s:g} s"
    )
    headers = ["fleet", "TTFT SLO met", "replica-hours", "cost", "peak replicas", "up/down",
               "unserved"]  # fmt: skip
    rows = []
    for r in (auto, static):
        row = _row(r, args.cost_per_replica_hour)
        rows.append([r.name, f"{row['slo_attainment']:.1%}", row["replica_hours"],
                     f"${row['cost']:,.2f}", r.peak_replicas,
                     f"{r.decisions['up']}/{r.decisions['down']}", round(r.unserved)])  # fmt: skip
    ratio = auto.replica_seconds / static.replica_seconds if static.replica_seconds else 0.0
    tail = f"autoscaled uses {ratio:.0%} of the static fleet's replica-seconds"
    return "\n".join([head, "", text_table(headers, rows), "", tail])
