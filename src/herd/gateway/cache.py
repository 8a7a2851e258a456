"""Exact-match response cache for reproducible requests (temperature 0, or a seed).

The key hashes tenant, model identity, endpoint and the canonical request (sorted JSON without
`stream`/`stream_options`/`user`), so a streaming and a plain client share an entry but two
tenants never do unless sharing is switched on. In memory it is an LRU with a size bound and a
TTL; with Redis, entries live there under the same TTL and are shared by gateway instances."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any

from herd.gateway.config import CacheConfig
from herd.gateway.request_info import RequestInfo

# Fields that change how an answer is delivered or attributed, not what it is.
DELIVERY_FIELDS = ("stream", "stream_options", "user")
BYPASS_HEADER = "x-herd-cache"  # request: "bypass" skips the cache; response: hit, miss, bypass


def cache_key(tenant: str, revision: str, info: RequestInfo, shared: bool) -> str:
    canonical = {k: v for k, v in info.payload.items() if k not in DELIVERY_FIELDS}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    scope = "*" if shared else tenant
    # The fleet version that will answer is part of the key: no answer crosses a rollout.
    version = info.route.version or ""
    digest = hashlib.sha256(
        f"{scope}\0{revision}\0{version}\0{info.endpoint}\0{text}".encode()
    ).hexdigest()
    return f"herd:rc:{digest}"


class ResponseCache:
    """An exact-match cache of deterministic answers (temperature 0 or a seed), keyed by tenant,
    model revision and the request body, in a bounded in-memory LRU or in Redis shared by
    gateway instances. One tenant never receives another's answer unless sharing is configured."""

    def __init__(self, config: CacheConfig, revision: str = "", redis=None):
        self.config = config
        self.revision = revision
        self.redis = redis if config.use_redis else None
        self._lru: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expiry, json)

    def key_for(self, tenant: str, info: RequestInfo) -> str | None:
        """The cache key, or None when this request must not be cached."""
        if not self.config.enabled or not info.deterministic:
            return None
        return cache_key(tenant, self.revision, info, self.config.shared_across_tenants)

    async def get(self, key: str) -> dict[str, Any] | None:
        if self.redis is not None:
            raw = await self.redis.get(key)
        else:
            item = self._lru.get(key)
            raw = None
            if item is not None:
                if item[0] < time.monotonic():
                    del self._lru[key]
                else:
                    self._lru.move_to_end(key)
                    raw = item[1]
        return json.loads(raw) if raw else None

    async def put(self, key: str, answer: dict[str, Any]) -> None:
        raw = json.dumps(answer, separators=(",", ":")).encode()
        if len(raw) > self.config.max_entry_bytes:
            return
        if self.redis is not None:
            await self.redis.set(key, raw, px=int(self.config.ttl_s * 1000))
            return
        self._lru[key] = (time.monotonic() + self.config.ttl_s, raw)
        self._lru.move_to_end(key)
        while len(self._lru) > self.config.max_entries:
            self._lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._lru)
