"""`herd plan`: size a deployment from a model config and a GPU, and optionally a bench run.

Prints a table (or JSON with --json) of weights per GPU, KV bytes per token, KV tokens that
fit and the most concurrent sequences; with --bench, the replicas and GPUs a target load needs."""

import itertools
import json

from herd.cli import CliError
from herd.cli.bench_cmds import csv_list, one_line_errors


def register(subparsers) -> None:

    help_ = "size a deployment: memory, KV capacity, GPUs for a load"
    p = one_line_errors(subparsers.add_parser("plan", help=help_))
    p.add_argument("--model", required=True, help="config.json, model directory or built-in name")
    p.add_argument(
        "--gpu", default="H100-80GB", help="H100-80GB, H200, A100-80GB, L40S or custom:<N>GiB"
    )
    p.add_argument(
        "--tp", type=csv_list(int), default=[1], help="tensor-parallel sizes, e.g. 1,2,8"
    )
    p.add_argument(
        "--precision", type=csv_list(str), default=["bf16"], help="bf16,fp16,fp8,int8,int4"
    )
    p.add_argument(
        "--kv-dtype", type=csv_list(str), default=["bf16"], help="KV cache dtype(s): bf16, fp8"
    )
    p.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="fraction of GPU memory used"
    )
    p.add_argument(
        "--overhead-gib", type=float, default=2.0, help="per-GPU activations/graphs reserve"
    )
    p.add_argument("--input-len", type=int, default=1024, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=int, default=1024, help="output tokens per sequence")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    p.add_argument("--bench", help="herd bench results.json measured on one replica")
    p.add_argument("--target-rps", type=float, help="target load in requests/s (with --bench)")
    p.add_argument("--target-users", type=float, help="target concurrent users (with --bench)")
    p.add_argument("--slo-attainment", type=float, default=0.9, help="share of requests within SLO")
    p.add_argument("--gpus-per-replica", type=int, help="default: the bench run's --gpus")
    p.add_argument("--gpu-hour-cost", type=float, help="$ per GPU-hour for the cost line")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=handle)


def _memory_rows(args, model, gpu) -> list[dict]:
    from herd.plan.memory import PlanInputs, plan_memory

    rows = []
    for tp, prec, kv in itertools.product(args.tp, args.precision, args.kv_dtype):
        inputs = PlanInputs(
            tp=tp,
            precision=prec,
            kv_dtype=kv,
            gpu_memory_utilization=args.gpu_memory_utilization,
            overhead_gib=args.overhead_gib,
            input_len=args.input_len,
            output_len=args.output_len,
            block_size=args.block_size,
        )
        rows.append(plan_memory(model, gpu, inputs).to_dict())
    return rows


def handle(args) -> int:
    from herd.plan.capacity import load_bench, plan_capacity
    from herd.plan.gpus import resolve_gpu
    from herd.plan.model_config import ConfigError, load_model_config

    if not 0 < args.gpu_memory_utilization <= 1:
        raise CliError("--gpu-memory-utilization must be in (0, 1]")
    if (args.target_rps or args.target_users) and not args.bench:
        raise CliError("--target-rps/--target-users need --bench results.json")
    try:
        model = load_model_config(args.model)
        gpu = resolve_gpu(args.gpu)
        out = {"model": model.name, "params": model.num_params, "gpu": gpu.name}
        out["plans"] = _memory_rows(args, model, gpu)
        if args.bench:
            cap = plan_capacity(
                load_bench(args.bench),
                target_rps=args.target_rps,
                target_users=args.target_users,
                gpus_per_replica=args.gpus_per_replica,
                gpu_hour_cost=args.gpu_hour_cost,
                attainment=args.slo_attainment,
            )
            out["capacity"] = cap.to_dict()
    except (ConfigError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(out, indent=2) if args.json else _render(out))
    return 0


def _render(out: dict) -> str:
    from herd.bench.tables import text_table

    headers = ["tp", "weights", "kv", "weights GiB/GPU", "KV B/token", "KV GiB/GPU", "KV tokens",
               "seq len", "max seqs", "note"]  # fmt: skip
    rows = [
        [
            p["tp"],
            p["precision"],
            p["kv_dtype"],
            p["weights_gib_per_gpu"],
            p["kv_bytes_per_token"],
            p["kv_cache_gib_per_gpu"],
            p["kv_tokens"],
            p["seq_len"],
            p["max_concurrent_seqs"],
            p["note"] or "",
        ]  # fmt: skip
        for p in out["plans"]
    ]
    lines = [
        f"{out['model']} ({out['params'] / 1e9:.2f}B params) on {out['gpu']}",
        text_table(headers, rows),
    ]
    cap = out.get("capacity")
    if cap:
        cost = "" if cap["cost_per_hour"] is None else f", ${cap['cost_per_hour']:,.2f}/hour"
        lines.append(
            f"\n{cap['target']}: {cap['replicas']} replica(s) x {cap['gpus_per_replica']} GPU(s) = "
            f"{cap['gpus']} GPUs{cost} (one replica sustains {cap['per_replica_rps']:.2f} req/s, "
            f"~{cap['per_replica_users']:.0f} users at {cap['basis']})"
        )
    return "\n".join(lines)
