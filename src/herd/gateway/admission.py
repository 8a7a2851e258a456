"""Whether a caller may send this request now: the deny list, token budgets, and rate limits (a
key's, or per client address for anonymous traffic). What an admitted request holds is settled
once when it ends: the limiter gets its real usage and the budgets count it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass

from herd.gateway.auth import ANONYMOUS, ApiKey
from herd.gateway.budgets import Budgets
from herd.gateway.config import GatewayConfig
from herd.gateway.denylist import DenyList
from herd.gateway.errors import GatewayError
from herd.gateway.ratelimit import Limiter, Reservation
from herd.gateway.request_info import RequestInfo


@dataclass
class Admitted:
    """What an admitted request holds until `settle`: the identity its limits were counted
    under (the key, or the anonymous caller's address) and its rate-limit reservation."""

    key: ApiKey  # the caller's key (budgets are counted on it)
    limit_key: ApiKey  # the identity the limiter counted (per address when anonymous)
    reservation: Reservation | None


class Admission:
    """Admits or refuses each request: 403 when the key or address is denied, 429 naming the
    budget and its reset time when a budget is spent, 429 with Retry-After past a rate limit.
    Promises that every `admit` that returns is followed by exactly one `settle` by the caller."""

    def __init__(self, config: GatewayConfig, limiter: Limiter, budgets: Budgets, deny: DenyList):
        self.config = config
        self.limiter = limiter
        self.budgets = budgets
        self.deny = deny
        self.on_refused = lambda key_id, limit: None  # metrics hook

    def check_denied(self, key: ApiKey, address: str | None) -> None:
        self.deny.check(None if key is ANONYMOUS else key.id, address)

    async def admit(
        self, key: ApiKey, address: str | None, info: RequestInfo, headers: dict
    ) -> Admitted:
        self.check_denied(key, address)
        now = dt.datetime.now(dt.UTC)
        overrun = await self.budgets.check(key, now)
        if overrun is not None:
            self.on_refused(key.id, f"budget_{overrun.period.name}")
            raise GatewayError(
                429,
                f"{overrun.message} (key {key.id!r})",
                code="budget_exceeded",
                headers={"Retry-After": str(overrun.retry_after_s(now))},
            )
        limit_key = self._limit_key(key, address)
        if not limit_key.limited:
            return Admitted(key, limit_key, None)
        p = self.config.proxy
        decision = await self.limiter.admit(
            limit_key, info.reserve_tokens(p.chars_per_token, p.default_max_tokens)
        )
        headers.update(decision.headers)
        if decision.reservation is None:
            self.on_refused(key.id, decision.limit)
            who = f"address {address}" if limit_key is not key else f"key {key.id!r}"
            raise GatewayError(
                429,
                f"rate limit reached for {decision.limit} on {who}",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(decision.retry_after_s)))},
            )
        return Admitted(key, limit_key, decision.reservation)

    def _limit_key(self, key: ApiKey, address: str | None) -> ApiKey:
        a = self.config.anonymous
        if key is not ANONYMOUS or not (a.rpm or a.tpm or a.concurrency):
            return key
        return dataclasses.replace(
            key, id=f"anonymous@{address or '-'}", rpm=a.rpm, tpm=a.tpm, concurrency=a.concurrency
        )

    async def settle(self, admitted: Admitted | None, used_tokens: int) -> None:
        if admitted is None:
            return
        if admitted.reservation is not None:
            await self.limiter.settle(admitted.limit_key, admitted.reservation, used_tokens)
        await self.budgets.spend(admitted.key, used_tokens)
