"""Where one decode step goes: per-step wall time of `LLMEngine.step()` at a given batch size on
the ~100M bench model (bench_offline's SMALL shape), and a torch.profiler table of a few steps.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_step.py --batch 1 --model-dir /tmp/small
"""

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_offline import SMALL, make_prompts

# --modes: how a decode step runs (the fused C++ step takes any batch when asked for by name)
MODES = {
    "fused": dict(enforce_eager=True, fused_decode_max_batch=256),
    "eager": dict(enforce_eager=True, fused_decode_max_batch=0),
    "compiled": dict(enforce_eager=False, fused_decode_max_batch=0),
}


def decode_steps(engine, n: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of each of n steps; their process CPU seconds appended to `cpu`."""
    times = []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        engine.step()
        times.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return times


def start_decoding(engine, batch: int) -> None:
    """Adds `batch` requests, runs their prefill, and warms the decode path (compiling it)."""
    from herd.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)
    for i, p in enumerate(make_prompts(batch, 128, SMALL["vocab_size"])):
        engine.add_request(str(i), p, params)
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running) or (
        engine.scheduler.waiting
    ):
        engine.step()
    decode_steps(engine, 5)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model-dir")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--compare", action="store_true", help="eager and compiled, interleaved")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), help="these, interleaved")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--attention-backends",
        nargs="+",
        default=["auto"],
        help="one engine per backend (and per mode with --compare), interleaved",
    )
    ap.add_argument("--compile-max-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    from herd.engine.config import EngineConfig
    from herd.engine.llm_engine import LLMEngine
    from herd.model.demo import write_demo_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="herd-prof-"))
    if model_dir.suffix != ".gguf" and not (model_dir / "config.json").exists():
        write_demo_model(model_dir, **SMALL)
    modes = args.modes or (["eager", "compiled"] if args.compare else [None])
    engines = {}
    for backend in args.attention_backends:
        for mode in modes:
            kw = MODES[mode] if mode else dict(enforce_eager=args.enforce_eager)
            config = EngineConfig.from_flat(
                model=str(model_dir),
                dtype=args.dtype,
                num_kv_blocks=2048,
                compile_max_batch=args.compile_max_batch,
                attention_backend=backend,
                **kw,
            )
            name = f"{backend} {mode or ('eager' if args.enforce_eager else 'default')}"
            engines[name] = engine = LLMEngine(config)
            start_decoding(engine, args.batch)
    times = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        for name, engine in engines.items():
            times[name] += decode_steps(engine, args.steps // args.rounds, cpu[name])
    for name, ts in times.items():
        med = statistics.median(ts)
        # CPU time per step says what the step costs when other processes share the cores
        # (with 1 thread it is the work itself; with more it includes OpenMP spin-waits).
        cmed = statistics.median(cpu[name])
        print(
            f"{name} batch {args.batch}: step median {med * 1e3:.2f} ms wall, "
            f"{args.batch / med:.1f} tok/s (min {min(ts) * 1e3:.2f} ms); "
            f"CPU {cmed * 1e3:.2f} ms/step median (min {min(cpu[name]) * 1e3:.2f})"
        )
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            decode_steps(engine, 10)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        print(table)


if __name__ == "__main__":
    main()
