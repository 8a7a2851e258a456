"""What `herd top` shows, read from a running gateway only: `/admin/autoscaler`, `/admin/replicas`
and `/metrics`, polled together into one `Snapshot`; tokens/s come from two snapshots."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from herd.protocol.prometheus import parse_metrics


@dataclass
class Snapshot:
    """The fleet as the gateway reported it at `at` (monotonic seconds). A source that failed
    leaves its part empty and adds a one-line message to `errors`; nothing here raises."""

    at: float
    autoscaler: dict | None = None  # /admin/autoscaler's body; None: off or unreadable
    autoscaler_off: bool = False  # the gateway answered 404: the fleet is not autoscaled
    replicas: list[dict] = field(default_factory=list)
    queued: float | None = None  # herd_gateway_requests_queued
    in_flight: float | None = None  # herd_gateway_requests_in_flight
    errors: list[str] = field(default_factory=list)


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict
) -> tuple[int | None, str, str]:
    """(status, body, error); status None when the gateway could not be reached."""
    try:
        async with session.get(url, headers=headers) as resp:
            return resp.status, await resp.text(), ""
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return None, "", f"{type(exc).__name__}: {exc}".rstrip(": ")


def _refusal(path: str, status: int | None, body: str, error: str) -> str:
    if status is None:
        return f"GET {path}: gateway unreachable ({error})"
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.strip()[:120]
    hint = " (wrong or missing --admin-key?)" if status in (401, 403) else ""
    return f"GET {path}: HTTP {status}{hint}: {message}"


def _json(path: str, body: str, snap: Snapshot) -> dict | None:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    snap.errors.append(f"GET {path}: the answer is not a JSON object")
    return None


async def poll(
    session: aiohttp.ClientSession, base_url: str, admin_key: str | None, timeout_s: float = 5.0
) -> Snapshot:
    """One snapshot: the three endpoints fetched at once, each failure recorded, not raised."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    paths = ("/admin/autoscaler", "/admin/replicas", "/metrics")
    try:
        async with asyncio.timeout(timeout_s):
            answers = await asyncio.gather(*(_get(session, base + p, headers) for p in paths))
    except TimeoutError:
        return Snapshot(at=time.monotonic(), errors=[f"{base}: no answer within {timeout_s:g} s"])
    snap = Snapshot(at=time.monotonic())
    if all(status is None for status, _, _ in answers):
        snap.errors.append(f"{base}: gateway unreachable ({answers[0][2]})")
        return snap
    (a_status, a_body, a_err), (r_status, r_body, r_err), (m_status, m_body, m_err) = answers
    if a_status == 404:
        snap.autoscaler_off = True
    elif a_status == 200:
        snap.autoscaler = _json(paths[0], a_body, snap)
    else:
        snap.errors.append(_refusal(paths[0], a_status, a_body, a_err))
    if r_status == 200:
        data = _json(paths[1], r_body, snap) or {}
        snap.replicas = [r for r in data.get("replicas") or [] if isinstance(r, dict)]
    else:
        snap.errors.append(_refusal(paths[1], r_status, r_body, r_err))
    if m_status == 200:
        flat = parse_metrics(m_body)
        snap.queued = flat.get("herd_gateway_requests_queued")
        snap.in_flight = flat.get("herd_gateway_requests_in_flight")
    else:
        snap.errors.append(_refusal(paths[2], m_status, m_body, m_err))
    return snap


def token_rates(before: Snapshot | None, now: Snapshot) -> dict[str, float]:
    """Generated tokens/s per replica URL from the cumulative `generation_tokens` counters of two
    snapshots; a replica missing from either, without the counter, or whose counter went back
    (restarted) has no rate."""
    if before is None or now.at <= before.at:
        return {}
    old = {r.get("url"): r.get("generation_tokens") for r in before.replicas}
    rates = {}
    for r in now.replicas:
        a, b = old.get(r.get("url")), r.get("generation_tokens")
        if isinstance(a, int | float) and isinstance(b, int | float) and b >= a:
            rates[r["url"]] = (b - a) / (now.at - before.at)
    return rates
