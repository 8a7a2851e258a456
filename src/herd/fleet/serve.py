"""`herd serve` in one process: the gateway plus a supervisor of local replicas, their rollouts
and (with `--autoscale`) the autoscaler.

Signals: SIGHUP restarts every replica; SIGTERM or SIGINT stops in order — the gateway refuses
new requests and finishes those in flight, then each replica drains and exits."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from herd.fleet.config import ServeConfig
from herd.fleet.rollout import Rollouts
from herd.fleet.supervisor import Supervisor, Version
from herd.gateway.app import Gateway, serve

if TYPE_CHECKING:
    from herd.fleet.autoscaler import Autoscaler


class LocalFleet:
    """The gateway's `FleetControl` for replicas on this machine: rollouts through `Rollouts`,
    the autoscaler's state when there is one."""

    def __init__(self, config: ServeConfig, gateway: Gateway, log_dir: str):
        self.gateway = gateway
        self.supervisor = Supervisor(config.fleet, gateway.replicas, gateway.session, log_dir)
        self.rollouts = Rollouts(self.supervisor, gateway.dispatcher)
        self.scaler: Autoscaler | None = None
        if config.autoscale.enabled:
            from herd.fleet.autoscaler import Autoscaler  # only autoscaled fleets need the policy

            self.scaler = Autoscaler(config.autoscale, self.supervisor, gateway, self.rollouts)

    async def rollout(self, spec: dict[str, Any] | None) -> dict:
        return await self.rollouts.rollout(spec)

    async def promote(self) -> dict:
        return await self.rollouts.promote()

    async def abort(self) -> dict:
        return await self.rollouts.abort()

    def autoscaler(self) -> dict | None:
        return self.scaler.view() if self.scaler is not None else None

    async def start(self) -> None:
        await self.supervisor.start()
        await self._start_fallback()
        if self.scaler is not None:
            self.supervisor.spawn(self.scaler.run())

    async def _start_fallback(self) -> None:
        """The optional fallback pool: a smaller model for requests the main pool cannot take
        within `fallback_after_s` (off unless `fallback_model` is set)."""
        fleet = self.supervisor.config
        if not fleet.fallback_model:
            return
        version = Version("fallback", fleet.fallback_model, tuple(fleet.fallback_args))
        added = await asyncio.gather(
            *(self.supervisor.add(version, fallback=True) for _ in range(fleet.fallback_replicas))
        )
        if not all(added):
            raise RuntimeError("a fallback replica did not become ready")
        self.gateway.dispatcher.fallback_after_s = fleet.fallback_after_s


def start_size(config: ServeConfig) -> int:
    """Replicas to start with: fleet.replicas, kept within the autoscaler's bounds."""
    a, n = config.autoscale, config.fleet.replicas
    return min(max(n, a.min_replicas), a.max_replicas) if a.enabled else n


async def run_fleet(
    config: ServeConfig,
    on_ready: Callable[[Gateway], object] | None = None,
    log_dir: str | None = None,
) -> int:
    gateway = Gateway(config.gateway)
    runner = await serve(gateway, config.gateway.host, config.gateway.port)
    config.fleet.replicas = start_size(config)
    fleet = LocalFleet(config, gateway, log_dir or tempfile.mkdtemp(prefix="herd-fleet-"))
    gateway.fleet = fleet
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hup() -> None:
        fleet.supervisor.spawn(fleet.rollout(None))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        start = asyncio.create_task(fleet.start())
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
        await (
            fleet.supervisor.stop()
        )  # signals stay handled: a second SIGTERM must not cut the drain
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
