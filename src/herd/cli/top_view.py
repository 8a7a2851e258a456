"""How `herd top` draws a `Snapshot` with `rich`: a header with the gateway's queue and the
autoscaler's desired and actual counts and last decision, a table of replicas, then any errors."""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from herd.cli.top_poll import Snapshot

COLUMNS = ("replica", "state", "version", "in flight", "waiting", "running", "KV", "tok/s")


def _cell(value, fmt: str = "{}") -> str:
    """Missing or null fields are a dash, never 0."""
    if value is None or value == "":
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _autoscaler(snap: Snapshot, wall_now: float) -> Text:
    if snap.autoscaler_off:
        return Text("autoscaler off", style="dim")
    a = snap.autoscaler
    if a is None:
        return Text("autoscaler: -", style="dim")
    line = Text(f"autoscaler: desired {_cell(a.get('desired'))}, actual {_cell(a.get('actual'))}")
    if "standby" in a:
        line.append(f", standby {_cell(a.get('standby'))}")
    last = a.get("last_decision") or {}
    if last:
        at = last.get("at")
        age = f", {wall_now - at:.0f}s ago" if isinstance(at, int | float) else ""
        line.append(f"\nlast decision (target {_cell(last.get('target'))}{age}): ")
        line.append(str(last.get("reason") or "-"), style="bold")
    return line


def _replicas(snap: Snapshot, rates: dict[str, float]) -> Table:
    table = Table(title=f"{len(snap.replicas)} replica(s)", title_justify="left")
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i < 3 else "right")
    for r in snap.replicas:
        kv = r.get("kv_usage")
        table.add_row(
            _cell(r.get("url")),
            _cell(r.get("state")),
            _cell(r.get("version")),
            _cell(r.get("in_flight")),
            _cell(r.get("num_waiting"), "{:g}"),
            _cell(r.get("num_running"), "{:g}"),
            _cell(kv * 100 if isinstance(kv, int | float) else None, "{:.0f}%"),
            _cell(rates.get(r.get("url")), "{:.1f}"),
        )
    return table


def render(snap: Snapshot, url: str, rates: dict[str, float], wall_now: float | None = None):
    """The whole view as one rich renderable (`wall_now`: epoch seconds, for decision ages)."""
    wall_now = time.time() if wall_now is None else wall_now
    head = Text(f"herd top  {url}  ", style="bold")
    head.append(f"queued {_cell(snap.queued, '{:g}')}  in flight {_cell(snap.in_flight, '{:g}')}")
    parts = [head, _autoscaler(snap, wall_now), _replicas(snap, rates)]
    parts += [Text(e, style="bold red") for e in snap.errors]
    return Group(*parts)
