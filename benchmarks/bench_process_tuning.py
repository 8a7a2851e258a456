"""Process-level tuning A/B: the offline workloads (batch 1, and 64 prompts x 128/128) run as
child processes under each configuration of `herd.engine.process_tuning` (plain, tcmalloc,
Intel OpenMP, thread binding, all), in interleaved rounds (ABC ABC ...) so that every
configuration sees the same machine load. Reports output tok/s and the process CPU time of the
timed section per configuration (median over rounds), plus the load average around each run.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_process_tuning.py --rounds 3
    PYTHONPATH=src .venv/bin/python benchmarks/bench_process_tuning.py --workloads 64 \
        --configs plain tcmalloc,iomp --rounds 4 --model-dir /tmp/small
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ["plain", "tcmalloc", "iomp", "bind", "tcmalloc,iomp", "tcmalloc,iomp,bind"]


def worker(args: argparse.Namespace) -> None:
    """One workload in this process: prints one JSON line with tok/s and CPU seconds."""
    sys.path.insert(0, str(HERE))
    from bench_offline import SMALL, make_prompts

    from herd import LLM, SamplingParams
    from herd.engine.process_tuning import loaded_runtime

    prompts = make_prompts(args.num_prompts, args.input_len, SMALL["vocab_size"])
    if args.prompts:  # the peers' workload (shared/peers/workload.py), as bench_offline --prompts
        prompts = [p["ids"] for p in json.loads(Path(args.prompts).read_text())][: args.num_prompts]
    kw = {"enforce_eager": True} if args.enforce_eager else {}
    if args.compile_max_batch:
        kw["compile_max_batch"] = args.compile_max_batch
    llm = LLM(args.model_dir, dtype=args.dtype, max_num_seqs=len(prompts), **kw)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    # Warm-up (compiles the decode graphs) on short prompts of other ids: no prefix-cache hits.
    warm = make_prompts(len(prompts), 16, SMALL["vocab_size"], seed=1)
    llm.generate([{"prompt_token_ids": p} for p in warm], SamplingParams(max_tokens=4))
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.generate(inputs, params)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"tok_s": tokens / wall, "cpu_s": cpu, "wall_s": wall,
                      "runtime": loaded_runtime()}))  # fmt: skip


def load() -> float:
    return os.getloadavg()[0]


def run_one(config: str, n: int, args: argparse.Namespace) -> dict:
    from herd.engine.process_tuning import tuned_environ

    parts = () if config == "plain" else tuple(config.split(","))
    base = {k: v for k, v in os.environ.items() if k != "HERD_PROCESS_TUNED"}
    base.update(kv.split("=", 1) for kv in args.env)
    env, _ = tuned_environ(parts, base)
    cmd = [sys.executable, __file__, "--worker", "--num-prompts", str(n), "--model-dir",
           str(args.model_dir), "--dtype", args.dtype, "--output-len", str(args.output_len),
           "--input-len", str(args.input_len)]  # fmt: skip
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    if args.prompts:
        cmd += ["--prompts", args.prompts]
    if args.compile_max_batch:
        cmd += ["--compile-max-batch", str(args.compile_max_batch)]
    before = load()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": proc.stderr[-500:], "load": (before, load())}
    return {**json.loads(lines[-1]), "load": (before, load())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--workloads", nargs="+", type=int, default=[1, 64], help="prompt counts")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--compile-max-batch", type=int)
    ap.add_argument("--model-dir")
    ap.add_argument("--prompts", help="prompts.json from shared/peers/workload.py")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument(
        "--env", nargs="*", default=[], help="K=V set in every child (e.g. OMP_WAIT_POLICY=PASSIVE)"
    )
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from bench_offline import SMALL

    from herd.model.demo import write_demo_model

    args.model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="herd-tuning-"))
    if not (args.model_dir / "config.json").exists():
        write_demo_model(args.model_dir, **SMALL)
    results: dict[tuple[int, str], list[dict]] = {}
    for r in range(args.rounds):
        for n in args.workloads:
            for config in args.configs:
                res = run_one(config, n, args)
                results.setdefault((n, config), []).append(res)
                print(f"round {r} batch {n} {config}: {json.dumps(res)}", flush=True)
    print("\n| prompts | config | tok/s median (all) | CPU s median | load 1-min | runtime |")
    print("|---:|---|---|---:|---|---|")
    for (n, config), runs in results.items():
        ok = [x for x in runs if "tok_s" in x]
        if not ok:
            print(f"| {n} | {config} | failed | | | |")
            continue
        toks = ", ".join(f"{x['tok_s']:.1f}" for x in ok)
        loads = ", ".join(f"{x['load'][0]:.1f}" for x in ok)
        print(f"| {n} | {config} | {statistics.median(x['tok_s'] for x in ok):.1f} ({toks}) | "
              f"{statistics.median(x['cpu_s'] for x in ok):.1f} | {loads} | {ok[0]['runtime']} |")  # fmt: skip


if __name__ == "__main__":
    main()
