"""Process entry for one replica: logging, the engine factory from `ServerConfig`, the app, and
`lifecycle.serve` on a fresh event loop."""

import asyncio
import logging
import os

from herd.server.config import ServerConfig


def engine_factory(config: ServerConfig):
    """A callable that builds the `LLMEngine` (run in the engine thread, not the event loop)."""

    def build():
        from herd.engine.llm_engine import LLMEngine

        return LLMEngine(config.engine)

    return build


def run_replica(config: ServerConfig) -> int:
    """Serve until SIGTERM; the exit status. `OSError` if the address cannot be bound."""
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
    engine = AsyncEngine(engine_factory(config), warmup=config.warmup)
    app = create_app(engine, config)
    return asyncio.run(serve(app, engine, config))
