"""The simulator's picture (PNG, Agg backend): arrival rate, replicas and queue over time, the
autoscaled fleet beside the static one."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from herd.fleet.autoscale_sim import SimResult  # noqa: E402


def plot_simulation(auto: SimResult, static: SimResult, path: str | Path) -> Path:
    """Three panels sharing the time axis (minutes, or hours past three hours of trace)."""
    t = auto.series["t"]
    hours = bool(t) and t[-1] > 3 * 3600
    scale, unit = (3600.0, "hours") if hours else (60.0, "minutes")
    x = [v / scale for v in t]
    fig, (load, reps, queue) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    load.plot(x, auto.series["arrival_rps"], lw=0.8, color="tab:gray")
    load.set_ylabel("arrivals (req/s)")
    load.set_title("Autoscaling simulation")
    total = [r + s for r, s in zip(auto.series["ready"], auto.series["starting"], strict=True)]
    reps.step(x, total, where="post", label=f"{auto.name}: ready + starting")
    reps.step(x, auto.series["ready"], where="post", lw=0.8, label=f"{auto.name}: ready")
    reps.step(x, static.series["ready"], where="post", ls="--", label=static.name)
    reps.set_ylabel("replicas")
    reps.legend(fontsize="small", loc="upper left")
    queue.plot(x, auto.series["queued"], lw=0.8, label=auto.name)
    queue.plot(x, static.series["queued"], lw=0.8, ls="--", label=static.name)
    queue.set_ylabel("queued requests")
    queue.set_xlabel(unit)
    queue.legend(fontsize="small", loc="upper left")
    for ax in (load, reps, queue):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
