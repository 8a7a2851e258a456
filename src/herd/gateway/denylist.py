"""The deny list: API keys (by id) and client addresses (IPs or CIDR networks) refused with 403.

Changed through the admin API. With Redis the list lives there and every gateway re-reads it
when its version counter moves (checked every `poll_s`, 0.25 s by default), so a change takes
effect everywhere within a second; without Redis it is this gateway's alone."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from herd.gateway.errors import GatewayError

log = logging.getLogger(__name__)

SETS = {"key": "keys", "address": "addresses"}  # kind -> its Redis set's name suffix


def parse_address(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise GatewayError(
            400, f"not an IP address or network: {value!r}", param="address"
        ) from None


class DenyList:
    """Denied key ids and address networks. `check` raises 403 for a denied caller; `add` /
    `remove` change the list (through Redis when configured, where every gateway's poller picks
    the change up within `poll_s` plus one Redis round trip)."""

    def __init__(self, redis=None, prefix: str = "herd:deny", poll_s: float = 0.25):
        self.redis = redis
        self.prefix = prefix
        self.poll_s = poll_s
        self.keys: set[str] = set()
        self.networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        self._version: bytes | None = None
        self._loaded = False
        self._task: asyncio.Task | None = None

    def check(self, key_id: str | None, address: str | None) -> None:
        if key_id is not None and key_id in self.keys:
            raise GatewayError(403, "this API key is denied", code="key_denied")
        if address and self.networks:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return
            if any(ip in net for net in self.networks):
                raise GatewayError(
                    403, "requests from this address are denied", code="address_denied"
                )

    def to_json(self) -> dict:
        return {"keys": sorted(self.keys), "addresses": sorted(str(n) for n in self.networks)}

    async def add(self, kind: str, value: str) -> None:
        await self._change(kind, value, add=True)

    async def remove(self, kind: str, value: str) -> None:
        await self._change(kind, value, add=False)

    async def _change(self, kind: str, value: str, add: bool) -> None:
        member = str(parse_address(value)) if kind == "address" else value
        if self.redis is None:
            target = self.networks if kind == "address" else self.keys
            item = parse_address(member) if kind == "address" else member
            target.add(item) if add else target.discard(item)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            name = f"{self.prefix}:{SETS[kind]}"
            pipe.sadd(name, member) if add else pipe.srem(name, member)
            await pipe.incr(f"{self.prefix}:version").execute()
        await self.refresh()

    # --- Redis sync ---

    def start(self) -> None:
        if self.redis is not None:
            self._task = asyncio.create_task(self._poll(), name="herd-denylist")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Re-read the list from Redis if its version moved."""
        version = await self.redis.get(f"{self.prefix}:version")
        if self._loaded and version == self._version:
            return
        keys = await self.redis.smembers(f"{self.prefix}:{SETS['key']}")
        addrs = await self.redis.smembers(f"{self.prefix}:{SETS['address']}")
        self.keys = {k.decode() for k in keys}
        self.networks = {parse_address(a.decode()) for a in addrs}
        self._version, self._loaded = version, True

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: keep the last list, try again
                log.warning("deny list refresh failed: %s", exc)
            await asyncio.sleep(self.poll_s)
