"""`herd bench compare`: several runs side by side (e.g. bf16 vs fp8, 2 vs 4 GPUs, herd vs vLLM).

Levels are matched by load; each metric gets its ratio to the first run (the baseline) and a
verdict on whether the difference is beyond run-to-run noise. With pool=True, files with the
same label are pooled as repeats of one configuration. Scaling efficiency compares throughput
per GPU."""

from pathlib import Path

from herd.bench.reports import load_label
from herd.bench.stats import bootstrap_ci, verdict, welch_ci
from herd.bench.tables import markdown_table, text_table

# (title, section, key, samples key for bootstrap, percentile)
METRICS = (
    ("out tok/s", "throughput", "output_tokens_per_s", None, None),
    ("req/s", "throughput", "requests_per_s", None, None),
    ("TTFT p50 ms", "ttft_ms", "p50", "ttft_ms", 50),
    ("TTFT p99 ms", "ttft_ms", "p99", "ttft_ms", 99),
    ("TPOT p50 ms", "tpot_ms", "p50", "tpot_ms", 50),
    ("ITL p50 ms", "itl_ms", "p50", None, None),
    ("E2E p50 ms", "e2e_ms", "p50", "e2e_ms", 50),
    ("E2E p99 ms", "e2e_ms", "p99", "e2e_ms", 99),
    ("goodput req/s", "goodput", "requests_per_s", None, None),
    ("$/M out", "cost", "usd_per_million_output_tokens", None, None),
)


def group_runs(runs: list[dict], pool: bool = False) -> list[list[dict]]:
    """One group per run, or with `pool` per label (repeats of one configuration)."""
    if not pool:
        return [[run] for run in runs]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["label"], []).append(run)
    return list(groups.values())


def _levels(group: list[dict]) -> dict[tuple, list[dict]]:
    by_load: dict[tuple, list[dict]] = {}
    for run in group:
        for lv in run["levels"]:
            by_load.setdefault((lv["load"]["kind"], lv["load"]["value"]), []).append(lv)
    return by_load


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _repeat_values(levels: list[dict], section: str, key: str) -> list[float]:
    name = f"{section}.{key}"
    values = [r.get(name) for lv in levels for r in lv.get("repeats") or []]
    values = [v for v in values if v is not None]
    return (
        values
        if len(values) >= 2
        else [lv[section][key] for lv in levels if lv[section][key] is not None]
    )


def compare_metric(base: list[dict], other: list[dict], metric: tuple) -> dict:
    _, section, key, samples_key, pct = metric
    a_val, b_val = (
        _mean([lv[section][key] for lv in base]),
        _mean([lv[section][key] for lv in other]),
    )
    ci = welch_ci(_repeat_values(base, section, key), _repeat_values(other, section, key))
    if ci is None and samples_key:
        a = [s for lv in base for s in lv.get("samples", {}).get(samples_key, [])]
        b = [s for lv in other for s in lv.get("samples", {}).get(samples_key, [])]
        ci = bootstrap_ci(a, b, pct)
    ratio = b_val / a_val if a_val and b_val is not None else None
    return {
        "base": a_val,
        "value": b_val,
        "ratio": ratio,
        "ci95_diff": ci,
        "beyond_noise": verdict(ci),
    }


def compare_runs(runs: list[dict], pool: bool = False) -> dict:
    groups = group_runs(runs, pool)
    labels = [g[0]["label"] for g in groups]
    gpus = [g[0].get("gpus") or 1 for g in groups]
    base_levels = _levels(groups[0])
    rows = []
    for load, base in base_levels.items():
        entry = {
            "load": {"kind": load[0], "value": load[1]},
            "label": load_label(base[0]),
            "metrics": {},
        }
        for metric in METRICS:
            entry["metrics"][metric[0]] = [
                compare_metric(base, _levels(g).get(load, []), metric)
                if _levels(g).get(load)
                else None
                for g in groups[1:]
            ]
            entry["metrics"][metric[0]].insert(
                0, {"value": _mean([lv[metric[1]][metric[2]] for lv in base])}
            )
        entry["scaling_efficiency"] = _scaling(entry["metrics"]["out tok/s"], gpus)
        rows.append(entry)
    return {"schema": "herd.bench.compare/1", "labels": labels, "gpus": gpus,
            "repeats": [len(g) for g in groups], "levels": rows}  # fmt: skip


def _scaling(cells: list[dict | None], gpus: list[int]) -> list[float | None]:
    """Throughput gain over the ideal (linear in GPUs) relative to the baseline run."""
    out = [1.0]
    for cell, n in zip(cells[1:], gpus[1:], strict=True):
        ratio = cell and cell.get("ratio")
        out.append(ratio / (n / gpus[0]) if ratio is not None else None)
    return out


def comparison_rows(result: dict) -> tuple[list[str], list[list]]:
    labels = result["labels"]
    headers = ["load", "metric", labels[0]]
    for label in labels[1:]:
        headers += [label, f"{label} / {labels[0]}", "beyond noise"]
    rows = []
    for entry in result["levels"]:
        for name, cells in entry["metrics"].items():
            row = [entry["label"], name, cells[0]["value"]]
            for cell in cells[1:]:
                row += (
                    [None, None, "-"]
                    if cell is None
                    else [cell["value"], cell["ratio"], cell["beyond_noise"]]
                )
            rows.append(row)
    return headers, rows


def scaling_rows(result: dict) -> tuple[list[str], list[list]] | None:
    if len(set(result["gpus"])) < 2:
        return None
    headers = ["load"] + [
        f"{lab} ({g} GPU)" for lab, g in zip(result["labels"], result["gpus"], strict=True)
    ]
    return headers, [[e["label"], *e["scaling_efficiency"]] for e in result["levels"]]


def render(result: dict, markdown: bool = False) -> str:
    table = markdown_table if markdown else text_table
    parts = [table(*comparison_rows(result))]
    scaling = scaling_rows(result)
    if scaling:
        title = (
            "## Scaling efficiency"
            if markdown
            else "scaling efficiency (throughput gain / GPU ratio):"
        )
        parts += [title, table(*scaling)]
    return "\n\n".join(parts)


def write_compare(
    runs: list[dict], result: dict, out_dir: str | Path, pool: bool = False
) -> dict[str, Path]:
    import json

    from herd.bench.html_report import write_html
    from herd.bench.plots import plot_runs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = (
        f"# herd bench compare: {' vs '.join(result['labels'])}\n\n"
        + render(result, markdown=True)
        + "\n"
    )
    paths = {"json": out / "compare.json", "markdown": out / "compare.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(md)
    pngs = plot_runs([g[0] for g in group_runs(runs, pool)], out)
    paths["html"] = write_html(out / "compare.html", "herd bench compare", md, pngs)
    return paths
