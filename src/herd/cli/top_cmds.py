"""`herd top`: a live terminal view of a running fleet, through its gateway only (the admin API
and /metrics): replicas with state, version, load, KV usage and tokens/s; the gateway's queue; the
autoscaler's desired and actual counts and its last decision."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from herd.cli import CliError
from herd.cli.bench_cmds import one_line_errors


def register(subparsers) -> None:
    p = one_line_errors(subparsers.add_parser("top", help="live view of a fleet via its gateway"))
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    p.add_argument(
        "--admin-key", default=os.environ.get("HERD_ADMIN_KEY"),
        help="the gateway's admin key (default: $HERD_ADMIN_KEY)",
    )  # fmt: skip
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise CliError("--interval must be > 0")
    if not args.url.startswith(("http://", "https://")):
        raise CliError(f"--url must be an http(s) URL, not {args.url!r}")
    try:
        return asyncio.run(_once(args) if args.once else _live(args))
    except KeyboardInterrupt:
        return 0


def _console():
    from rich.console import Console

    # Piped output (tests, `| less`) gets a wide page rather than rich's 80-column default, so
    # decision reasons are not wrapped mid-number.
    return Console() if sys.stdout.isatty() else Console(width=160)


async def _once(args: argparse.Namespace) -> int:
    import aiohttp

    from herd.cli.top_poll import poll
    from herd.cli.top_view import render

    async with aiohttp.ClientSession() as session:
        snap = await poll(session, args.url, args.admin_key, timeout_s=max(5.0, args.interval))
    _console().print(render(snap, args.url, {}))
    return 1 if snap.errors else 0


async def _live(args: argparse.Namespace) -> int:
    import aiohttp
    from rich.live import Live

    from herd.cli.top_poll import poll, token_rates
    from herd.cli.top_view import render

    before = None
    async with aiohttp.ClientSession() as session:
        with Live(console=_console(), auto_refresh=False, screen=False) as live:
            while True:
                snap = await poll(
                    session, args.url, args.admin_key, timeout_s=max(5.0, args.interval)
                )
                live.update(render(snap, args.url, token_rates(before, snap)), refresh=True)
                before = snap if not snap.errors else before
                await asyncio.sleep(args.interval)  # the refresh period, not synchronisation
