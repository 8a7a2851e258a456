"""`herd serve` in one process: the gateway plus a supervisor of local replicas.

Signals: SIGHUP rolls every replica; SIGTERM or SIGINT stops in order — the gateway refuses
new requests and finishes those in flight, then each replica drains and exits."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from collections.abc import Callable

from herd.fleet.config import ServeConfig
from herd.fleet.supervisor import Supervisor
from herd.gateway.app import Gateway, serve


async def run_fleet(
    config: ServeConfig,
    on_ready: Callable[[Gateway], object] | None = None,
    log_dir: str | None = None,
) -> int:
    gateway = Gateway(config.gateway)
    runner = await serve(gateway, config.gateway.host, config.gateway.port)
    log_dir = log_dir or tempfile.mkdtemp(prefix="herd-fleet-")
    supervisor = Supervisor(config.fleet, gateway.replicas, gateway.session, log_dir)
    gateway.rollout = supervisor.rollout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    rollouts: set[asyncio.Task] = set()

    def hup() -> None:
        task = loop.create_task(supervisor.rollout())
        rollouts.add(task)
        task.add_done_callback(rollouts.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        start = asyncio.create_task(supervisor.start())
        done, _ = await asyncio.wait({start, asyncio.create_task(stop.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if start in done:
            start.result()  # raises if replicas could not start
            if on_ready is not None:
                on_ready(gateway)
            await stop.wait()
        else:
            start.cancel()
        await gateway.drain(config.fleet.drain_timeout_s)
        return 0
    finally:
        await supervisor.stop()  # signals stay handled: a second SIGTERM must not cut the drain
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
