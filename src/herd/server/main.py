"""Process entry for one replica: logging, the engine factory from `ServerConfig`, the app, and
`lifecycle.serve` on a fresh event loop."""

import asyncio
import logging
import os

from herd.server.config import ServerConfig


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_factory(config: ServerConfig):
    """A callable that builds the `LLMEngine` (run in the engine thread, not the event loop)."""

    def build():
        from herd.engine.config import EngineConfig, SchedulerConfig
        from herd.engine.llm_engine import LLMEngine

        return LLMEngine(
            EngineConfig(
                model=config.model,
                dtype=config.dtype,
                device=resolve_device(config.device),
                block_size=config.block_size,
                num_kv_blocks=config.num_kv_blocks,
                kv_cache_memory=config.kv_cache_memory,
                gpu_memory_utilization=config.gpu_memory_utilization,
                max_model_len=config.max_model_len,
                enable_prefix_caching=config.enable_prefix_caching,
                seed=config.seed,
                scheduler=SchedulerConfig(
                    max_num_batched_tokens=config.max_num_batched_tokens,
                    max_num_seqs=config.max_num_seqs,
                ),
            )
        )

    return build


def run_replica(config: ServerConfig) -> int:
    from herd.cli import CliError
    from herd.server.app import create_app
    from herd.server.async_engine import AsyncEngine
    from herd.server.lifecycle import serve

    # OpenMP workers that spin while waiting steal the CPU the event loop needs, and on a busy
    # machine a step stalls until a descheduled worker returns: on the 2-core test box a 1-token
    # request took 450 ms p50 with spinning workers and 2 ms with passive ones. Before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not os.path.isdir(config.model):
        raise CliError(f"--model {config.model!r} is not a directory")
    engine = AsyncEngine(engine_factory(config), warmup=config.warmup)
    app = create_app(engine, config)
    try:
        return asyncio.run(serve(app, engine, config))
    except OSError as exc:  # port in use, address not available
        raise CliError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
