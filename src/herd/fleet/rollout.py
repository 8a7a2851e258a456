"""Rollouts of a local fleet: restart every replica, or move to a new version (model, replica
arguments) directly or through a canary that takes a share of traffic until promoted or aborted.

Every replacement is surge-first (the new replica is ready before an old one drains), so capacity
never drops and no request fails; a new version that never gets ready leaves the old one serving."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import shlex
from pathlib import Path
from typing import Any

from herd.fleet.supervisor import Slot, Supervisor, Version
from herd.gateway.dispatch import Dispatcher
from herd.gateway.errors import GatewayError

log = logging.getLogger("herd.fleet")

SPEC_KEYS = {"version", "model", "args", "canary_percent"}


class Rollouts:
    """Owns the fleet's version changes. Promises: at most one canary at a time; traffic goes to
    the canary's version by `canary_percent` (the dispatcher's split), and to the stable version
    only after promote or abort; a failed start changes nothing."""

    def __init__(self, supervisor: Supervisor, dispatcher: Dispatcher):
        self.sup = supervisor
        self.dispatcher = dispatcher
        self.canary: Version | None = None
        self.percent = 0.0
        self.busy = False  # replacing replicas now: the autoscaler waits
        self._numbers = itertools.count(2)
        self.dispatcher.split = {supervisor.version.name: 100.0}

    def parse(self, spec: dict[str, Any]) -> tuple[Version, float]:
        """A rollout request body -> (new version, canary percent); 400 naming the bad key."""
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise GatewayError(400, f"unknown rollout key(s) {unknown}; valid: {sorted(SPEC_KEYS)}")
        model = spec.get("model", self.sup.version.model)
        if model is not None and (not isinstance(model, str) or not Path(model).exists()):
            raise GatewayError(400, f"model not found: {model!r}", param="model")
        args = spec.get("args", list(self.sup.version.args))
        if isinstance(args, str):
            args = shlex.split(args)
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise GatewayError(400, "'args' must be a list of strings or one string", param="args")
        percent = spec.get("canary_percent", 0)
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise GatewayError(400, "'canary_percent' must be a number", param="canary_percent")
        if not 0 <= percent < 100:
            raise GatewayError(400, "'canary_percent' must be in [0, 100)", param="canary_percent")
        name = spec.get("version") or f"v{next(self._numbers)}"
        taken = {s.version.name for s in self.sup.slots} | {self.sup.version.name}
        if not isinstance(name, str) or name in taken:
            raise GatewayError(400, f"version {name!r} is running already", param="version")
        return Version(name, model, tuple(args)), float(percent)

    async def rollout(self, spec: dict[str, Any] | None) -> dict:
        """No spec: restart every replica as it is. A spec: a new version, all at once, or a
        canary with `canary_percent` of traffic."""
        if spec is None:
            return await self._replace(self.sup.version, self.sup.version)
        if self.canary is not None:
            raise GatewayError(409, "a canary is running: promote or abort it first")
        version, percent = self.parse(spec)
        if percent == 0:
            return await self._replace(self.sup.version, version)
        return await self._start_canary(version, percent)

    async def _start_canary(self, version: Version, percent: float) -> dict:
        n = max(1, math.ceil(len(self.sup.serving(self.sup.version)) * percent / 100))
        slots = await asyncio.gather(*(self.sup.add(version) for _ in range(n)))
        if not all(slots):
            for slot in slots:
                if slot is not None:
                    await self.sup.retire(slot)
            return {"status": "failed", "version": version.name, "reason": "canary not ready"}
        self.canary, self.percent = version, percent
        self.dispatcher.split = {self.sup.version.name: 100.0 - percent, version.name: percent}
        log.info("canary %s: %d replica(s), %.0f%% of traffic", version.name, n, percent)
        return {"status": "canary", "version": version.name, "canary_percent": percent,
                "replicas": n}  # fmt: skip

    async def promote(self) -> dict:
        """The canary's version replaces the stable one, replica by replica, surge-first."""
        if self.canary is None:
            raise GatewayError(409, "no canary to promote: POST /admin/rollout with canary_percent")
        return await self._replace(self.sup.version, self.canary)

    async def abort(self) -> dict:
        """The canary's replicas drain and stop; all traffic returns to the stable version."""
        if self.canary is None:
            raise GatewayError(409, "no canary to abort")
        canary, self.canary = self.canary, None
        self.dispatcher.split = {self.sup.version.name: 100.0}
        for slot in [s for s in self.sup.slots if s.version == canary]:
            await self.sup.retire(slot)
        log.info("canary %s aborted", canary.name)
        return {"status": "aborted", "version": canary.name}

    async def _replace(self, old: Version, new: Version) -> dict:
        """Every replica of `old` replaced by one of `new`: start new, wait ready, drain old."""
        async with self.sup.lock:
            self.busy = True
            try:
                return await self._replace_locked(old, new)
            finally:
                self.busy = False

    async def _replace_locked(self, old: Version, new: Version) -> dict:
        olds = self.sup.serving(old)
        have = [s for s in self.sup.serving(new) if s not in olds]  # a canary's replicas count
        replaced = 0
        for slot in olds:
            if self.sup.stopping:
                break
            if have:
                have.pop()
            elif not await self._surge(new):
                return {"status": "failed", "replaced": replaced, "failed_slot": slot.index,
                        "version": new.name}  # fmt: skip
            if new != old:
                self._share(old, new, len(olds) - replaced - 1)
            await self.sup.retire(slot)
            replaced += 1
        self._switch(new)
        return {"status": "done", "replaced": replaced, "version": new.name}

    async def _surge(self, version: Version) -> Slot | None:
        slot = await self.sup.add(version)
        if slot is None:
            log.warning("rollout: a replica of %s did not become ready; keeping the old", version)
        return slot

    def _share(self, old: Version, new: Version, olds_left: int) -> None:
        """Mid-replacement, traffic follows the replicas: each version gets its share of them."""
        news = len(self.sup.serving(new))
        self.dispatcher.split = {old.name: float(olds_left), new.name: float(news)}

    def _switch(self, version: Version) -> None:
        self.sup.version = version
        self.canary = None
        self.dispatcher.split = {version.name: 100.0}
