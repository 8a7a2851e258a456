"""Per-key limits: requests and tokens per sliding minute, and concurrent requests.

Tokens are reserved at admission (prompt estimate + max_tokens) and settled to the real usage
when the request ends, so a burst cannot overshoot. The sliding-window log is exact: at no
moment did the last `window_s` admit more than the limit. With Redis, one Lua script per step
keeps that true across every gateway sharing the Redis; in memory it holds per gateway."""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field

from herd.gateway.auth import ApiKey


@dataclass
class Reservation:
    """What an admitted request holds against its key's limits until it settles: its entry in the
    window log, the tokens reserved, and whether it took a concurrency slot."""

    entry: str  # id of the admission in the window log
    tokens: int  # tokens reserved
    logged: bool  # counted in the request/token window
    concurrent: bool  # holds a concurrency slot


@dataclass
class Decision:
    """The limiter's answer to an admission: a reservation, or a refusal naming the limit hit with
    a Retry-After and the rate-limit headers to send."""

    reservation: Reservation | None  # None: refused
    limit: str | None = None  # which limit refused: requests, tokens, concurrency
    retry_after_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def _headers(key: ApiKey, count: int, used: int, reset_s: float) -> dict[str, str]:
    out = {}
    if key.rpm:
        out["x-ratelimit-limit-requests"] = str(key.rpm)
        out["x-ratelimit-remaining-requests"] = str(max(0, key.rpm - count))
        out["x-ratelimit-reset-requests"] = f"{max(0.0, reset_s):.3f}s"
    if key.tpm:
        out["x-ratelimit-limit-tokens"] = str(key.tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(0, key.tpm - used))
        out["x-ratelimit-reset-tokens"] = f"{max(0.0, reset_s):.3f}s"
    return out


def _verdict(key: ApiKey, count: int, used: int, running: int, need: int) -> str | None:
    if key.rpm and count >= key.rpm:
        return "requests"
    if key.tpm and used + need > key.tpm:
        return "tokens"
    if key.concurrency and running >= key.concurrency:
        return "concurrency"
    return None


class Limiter(ABC):
    """Per-key admission against requests per minute, tokens per minute and concurrency. `admit`
    reserves before the request runs; `settle` replaces the reservation with the real token
    count and frees the concurrency slot. Implemented in memory and in Redis (atomic Lua), with
    the same semantics."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s

    @abstractmethod
    async def admit(self, key: ApiKey, tokens: int) -> Decision: ...

    @abstractmethod
    async def settle(self, key: ApiKey, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reservation by the real usage and give back the concurrency slot."""


class _Window:
    def __init__(self) -> None:
        self.log: OrderedDict[str, tuple[float, int]] = OrderedDict()  # entry -> (time, tokens)
        self.used = 0  # tokens in the window
        self.running = 0  # concurrent requests

    def expire(self, now: float, window: float) -> None:
        while self.log:
            entry, (at, tokens) = next(iter(self.log.items()))
            if at > now - window:
                break
            del self.log[entry]
            self.used -= tokens


class MemoryLimiter(Limiter):
    """One gateway's limits. The log per key holds at most max(rpm, tpm) entries."""

    def __init__(self, window_s: float = 60.0):
        super().__init__(window_s)
        self._windows: dict[str, _Window] = {}  # bounded by the keys file

    async def admit(self, key: ApiKey, tokens: int) -> Decision:
        tokens = max(1, tokens)
        now = time.monotonic()
        w = self._windows.setdefault(key.id, _Window())
        w.expire(now, self.window_s)
        reset = next(iter(w.log.values()))[0] + self.window_s - now if w.log else 0.0
        verdict = _verdict(key, len(w.log), w.used, w.running, tokens)
        if verdict:
            headers = _headers(key, len(w.log), w.used, reset)
            return Decision(None, verdict, reset if verdict != "concurrency" else 1.0, headers)
        entry = uuid.uuid4().hex
        logged = bool(key.rpm or key.tpm)
        if logged:
            w.log[entry] = (now, tokens)
            w.used += tokens
        if key.concurrency:
            w.running += 1
        res = Reservation(entry, tokens, logged, bool(key.concurrency))
        return Decision(res, headers=_headers(key, len(w.log), w.used, reset or self.window_s))

    async def settle(self, key: ApiKey, reservation: Reservation, actual_tokens: int) -> None:
        w = self._windows.get(key.id)
        if w is None:
            return
        held = w.log.get(reservation.entry)
        if held is not None:
            w.log[reservation.entry] = (held[0], actual_tokens)
            w.used += actual_tokens - held[1]
        if reservation.concurrent:
            w.running = max(0, w.running - 1)


ADMIT_LUA = """
local log, tok, sum, conc = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window = tonumber(ARGV[1])
local rpm, tpm, cl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local need, entry = tonumber(ARGV[5]), ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
if #old > 0 then
  local freed = 0
  for i = 1, #old do
    freed = freed + tonumber(redis.call('HGET', tok, old[i]) or '0')
    redis.call('HDEL', tok, old[i])
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  redis.call('DECRBY', sum, freed)
end
local count = redis.call('ZCARD', log)
local used = tonumber(redis.call('GET', sum) or '0')
local running = tonumber(redis.call('GET', conc) or '0')
local reset = window
local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
if #oldest > 0 then reset = tonumber(oldest[2]) + window - now end
local verdict = ''
if rpm > 0 and count >= rpm then verdict = 'requests'
elseif tpm > 0 and used + need > tpm then verdict = 'tokens'
elseif cl > 0 and running >= cl then verdict = 'concurrency' end
if verdict == '' then
  if rpm > 0 or tpm > 0 then
    redis.call('ZADD', log, now, entry)
    redis.call('HSET', tok, entry, need)
    redis.call('INCRBY', sum, need)
    count = count + 1
    used = used + need
    for _, k in ipairs({log, tok, sum}) do redis.call('PEXPIRE', k, window + 60000) end
  end
  if cl > 0 then
    redis.call('INCR', conc)
    redis.call('PEXPIRE', conc, 600000)
  end
end
return {verdict, count, used, reset}
"""

SETTLE_LUA = """
local tok, sum, conc = KEYS[1], KEYS[2], KEYS[3]
local actual, entry, release = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local held = redis.call('HGET', tok, entry)
if held then
  redis.call('HSET', tok, entry, actual)
  redis.call('INCRBY', sum, actual - tonumber(held))
end
if release == '1' and tonumber(redis.call('DECR', conc)) < 0 then redis.call('SET', conc, 0) end
return 1
"""


class RedisLimiter(Limiter):
    """Limits shared by every gateway on one Redis; Redis's clock is the only clock.

    A concurrency slot of a gateway that died mid-request expires after ten idle minutes."""

    def __init__(self, redis, window_s: float = 60.0, prefix: str = "herd:rl"):
        super().__init__(window_s)
        self.redis = redis
        self.prefix = prefix
        self._admit = redis.register_script(ADMIT_LUA)
        self._settle = redis.register_script(SETTLE_LUA)

    def _keys(self, key: ApiKey) -> list[str]:
        base = f"{self.prefix}:{{{key.id}}}"  # hash tag: one cluster slot per key
        return [f"{base}:log", f"{base}:tok", f"{base}:sum", f"{base}:conc"]

    async def admit(self, key: ApiKey, tokens: int) -> Decision:
        tokens = max(1, tokens)
        entry = uuid.uuid4().hex
        args = [int(self.window_s * 1000), key.rpm, key.tpm, key.concurrency, tokens, entry]
        verdict, count, used, reset_ms = await self._admit(keys=self._keys(key), args=args)
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        reset = int(reset_ms) / 1000
        headers = _headers(key, int(count), int(used), reset)
        if verdict:
            return Decision(None, verdict, reset if verdict != "concurrency" else 1.0, headers)
        res = Reservation(entry, tokens, bool(key.rpm or key.tpm), bool(key.concurrency))
        return Decision(res, headers=headers)

    async def settle(self, key: ApiKey, reservation: Reservation, actual_tokens: int) -> None:
        keys = self._keys(key)
        args = [actual_tokens, reservation.entry, "1" if reservation.concurrent else "0"]
        await self._settle(keys=keys[1:], args=args)
