"""PNG plots of one or several runs (Agg backend; no display needed): throughput vs load,
TTFT and ITL percentiles vs load, and the latency-throughput curve. Several runs overlay."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import ScalarFormatter  # noqa: E402


def _xs(run: dict) -> tuple[list[float], str]:
    levels = run["levels"]
    kinds = {lv["load"]["kind"] for lv in levels}
    xlabel = "concurrent users" if kinds == {"concurrency"} else "offered rate (req/s)"
    return [lv["load"]["value"] for lv in levels], xlabel


def _series(run: dict, section: str, key: str) -> list[float]:
    return [
        lv[section][key] if lv[section][key] is not None else float("nan") for lv in run["levels"]
    ]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _load_axes(ax, xlabel: str, runs: list[dict]) -> None:
    ax.set_xlabel(xlabel)
    if all(lv["load"]["value"] > 0 for r in runs for lv in r["levels"]):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 4, 16 rather than 2^0, 2^2, 2^4
    ax.grid(True, alpha=0.3)


def plot_throughput(runs: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xlabel = "load"
    for run in runs:
        xs, xlabel = _xs(run)
        ax.plot(
            xs, _series(run, "throughput", "output_tokens_per_s"), marker="o", label=run["label"]
        )
    _load_axes(ax, xlabel, runs)
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs load")
    ax.legend()
    return _save(fig, path)


def plot_percentiles(runs: list[dict], section: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xlabel = "load"
    for run in runs:
        xs, xlabel = _xs(run)
        for key, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            ax.plot(
                xs, _series(run, section, key), style, marker="o", label=f"{run['label']} {key}"
            )
    _load_axes(ax, xlabel, runs)
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_latency_throughput(runs: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        xs = _series(run, "throughput", "output_tokens_per_s")
        line = ax.plot(xs, _series(run, "e2e_ms", "p50"), marker="o", label=f"{run['label']} p50")
        ax.plot(xs, _series(run, "e2e_ms", "p99"), ":", marker="x", color=line[0].get_color(),
                label=f"{run['label']} p99")  # fmt: skip
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("Latency vs throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_runs(runs: list[dict], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_throughput(runs, out_dir / "throughput.png"),
        plot_percentiles(runs, "ttft_ms", "Time to first token vs load", out_dir / "ttft.png"),
        plot_percentiles(runs, "itl_ms", "Inter-token latency vs load", out_dir / "itl.png"),
        plot_latency_throughput(runs, out_dir / "latency_throughput.png"),
    ]
