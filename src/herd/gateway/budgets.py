"""Token budgets: a key may spend at most so many tokens (prompt + completion) per UTC day or
calendar month. Past it the key gets 429 naming the budget and when it resets.

Usage is counted when a request ends (its real tokens); a request admitted while the budget had
room finishes, so a budget may be overrun by what was in flight when it ran out. Kept in Redis
when configured (shared by every gateway), else in this gateway's memory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from herd.gateway.auth import ApiKey

PERIODS = ("day", "month")


@dataclass(frozen=True)
class Period:
    """One budget period: which (`day` / `month`), its id (e.g. 2026-11-28), when it resets."""

    name: str
    id: str
    resets_at: dt.datetime

    @classmethod
    def of(cls, name: str, now: dt.datetime) -> Period:
        if name == "day":
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return cls(name, start.strftime("%Y-%m-%d"), start + dt.timedelta(days=1))
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + dt.timedelta(days=32)).replace(day=1)
        return cls(name, start.strftime("%Y-%m"), nxt)


@dataclass(frozen=True)
class Overrun:
    """A budget that is spent: which period, its size, and when it resets (UTC)."""

    period: Period
    quota: int
    used: int

    @property
    def message(self) -> str:
        when = self.period.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        label = "daily" if self.period.name == "day" else "monthly"
        return (
            f"{label} token budget of {self.quota} tokens is spent ({self.used} used); "
            f"it resets at {when}"
        )

    def retry_after_s(self, now: dt.datetime) -> int:
        return max(1, int((self.period.resets_at - now).total_seconds()))


def quotas(key: ApiKey) -> dict[str, int]:
    return {p: q for p, q in (("day", key.tokens_per_day), ("month", key.tokens_per_month)) if q}


class Budgets:
    """Counts each key's tokens per day and month and answers whether a budget is spent.
    Promises: with Redis every gateway sees the same counts (one INCRBY per period per request);
    counters expire after their period, so storage stays bounded."""

    def __init__(self, redis=None, prefix: str = "herd:budget"):
        self.redis = redis
        self.prefix = prefix
        self._used: dict[tuple[str, str, str], int] = {}  # (key, period, id) -> tokens

    def _name(self, key: ApiKey, period: Period) -> str:
        return f"{self.prefix}:{{{key.id}}}:{period.name}:{period.id}"

    async def check(self, key: ApiKey, now: dt.datetime | None = None) -> Overrun | None:
        """The first spent budget of `key`, or None while every budget has room."""
        now = now or dt.datetime.now(dt.UTC)
        for name, quota in quotas(key).items():
            period = Period.of(name, now)
            used = await self._get(key, period)
            if used >= quota:
                return Overrun(period, quota, used)
        return None

    async def spend(self, key: ApiKey, tokens: int, now: dt.datetime | None = None) -> None:
        if tokens <= 0:
            return
        now = now or dt.datetime.now(dt.UTC)
        for name in quotas(key):
            period = Period.of(name, now)
            if self.redis is None:
                k = (key.id, name, period.id)
                self._used[k] = self._used.get(k, 0) + tokens
                continue
            counter = self._name(key, period)
            ttl = int((period.resets_at - now).total_seconds()) + 86_400  # a day's grace
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.incrby(counter, tokens).expire(counter, ttl).execute()
        if self.redis is None and len(self._used) > 4 * 8192:  # drop finished periods
            live = {(p, Period.of(p, now).id) for p in PERIODS}
            self._used = {k: v for k, v in self._used.items() if (k[1], k[2]) in live}

    async def _get(self, key: ApiKey, period: Period) -> int:
        if self.redis is None:
            return self._used.get((key.id, period.name, period.id), 0)
        return int(await self.redis.get(self._name(key, period)) or 0)
