"""Turn a results document into the files a run leaves behind: results.json, results.csv,
results.md, plots (PNG) and report.html; and the table printed in the terminal."""

import csv
import io
from pathlib import Path

from herd.bench.results import save_results
from herd.bench.tables import markdown_table, text_table

# (column title, section, key) for the table and the CSV; None key means "the section itself".
COLUMNS = (
    ("load", "load", None),
    ("ok", "requests", "ok"),
    ("failed", "requests", "failed"),
    ("req/s", "throughput", "requests_per_s"),
    ("out tok/s", "throughput", "output_tokens_per_s"),
    ("total tok/s", "throughput", "total_tokens_per_s"),
    ("TTFT p50 ms", "ttft_ms", "p50"),
    ("TTFT p99 ms", "ttft_ms", "p99"),
    ("ITL p50 ms", "itl_ms", "p50"),
    ("ITL p99 ms", "itl_ms", "p99"),
    ("TPOT p50 ms", "tpot_ms", "p50"),
    ("E2E p50 ms", "e2e_ms", "p50"),
    ("E2E p99 ms", "e2e_ms", "p99"),
    ("goodput req/s", "goodput", "requests_per_s"),
    ("cache hit", "prefix_cache", "hit_rate"),
    ("$/M out", "cost", "usd_per_million_output_tokens"),
)
CSV_SECTIONS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")


def load_label(level: dict) -> str:
    load = level["load"]
    mark = " *" if level.get("saturated") else ""
    return f"{'c' if load['kind'] == 'concurrency' else 'r'}={load['value']:g}{mark}"


def level_row(level: dict) -> list:
    return [
        load_label(level) if key is None else level[section][key] for _, section, key in COLUMNS
    ]


def terminal_table(results: dict) -> str:
    rows = [level_row(lv) for lv in results["levels"]]
    lines = [
        f"{results['label']}  ({results['target']['model']} at {results['target']['base_url']})"
    ]
    lines.append(text_table([c[0] for c in COLUMNS], rows))
    lines += [f"warning: {w}" for w in results["warnings"]]
    return "\n".join(lines)


def to_csv(results: dict) -> str:
    """One row per level: load, counts, throughput, every latency statistic, goodput, cost."""
    buf = io.StringIO()
    rows = []
    for lv in results["levels"]:
        row = {
            "label": results["label"],
            "load_kind": lv["load"]["kind"],
            "load_value": lv["load"]["value"],
        }
        row.update(
            {f"requests_{k}": v for k, v in lv["requests"].items() if k != "failed_by_reason"}
        )
        row.update({f"throughput_{k}": v for k, v in lv["throughput"].items()})
        for section in CSV_SECTIONS:
            row.update({f"{section[:-3]}_{k}_ms": v for k, v in lv[section].items()})
        row.update({f"goodput_{k}": v for k, v in lv["goodput"].items()})
        row["prefix_cache_hit_rate"] = lv["prefix_cache"]["hit_rate"]
        row.update(lv["cost"])
        row["client_bottleneck"] = lv["client"].get("bottleneck")
        rows.append(row)
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def to_markdown(results: dict) -> str:
    t = results["target"]
    w = results["workload"]
    lines = [
        f"# herd bench: {results['label']}",
        "",
        f"- target: `{t['base_url']}` model `{t['model']}`, {t['endpoint']} endpoint, stream={t['stream']}",
        f"- workload: {w['kind']}, input {w['input_len']} / output {w['output_len']} tokens "
        f"({w['length_dist']}), dataset {w['content_hash']}",
        f"- tokenizer: {results['tokenizer']['name']} ({results['tokenizer']['kind']})",
        f"- SLO: {results['slo'] or 'none'}; GPUs: {results['gpus']}; $/GPU-hour: {results['gpu_hour_cost']}",
        f"- created {results['created']} (schema {results['schema']})",
        "",
        markdown_table([c[0] for c in COLUMNS], [level_row(lv) for lv in results["levels"]]),
    ]
    if results["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results["warnings"]]
    return "\n".join(lines) + "\n"


def write_reports(results: dict, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Every output file; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "markdown": out / "results.md",
    }
    save_results(results, paths["json"])
    paths["csv"].write_text(to_csv(results))
    paths["markdown"].write_text(to_markdown(results))
    if plots:
        from herd.bench.html_report import write_html
        from herd.bench.plots import plot_runs

        pngs = plot_runs([results], out)
        paths.update({f"png:{p.stem}": p for p in pngs})
        paths["html"] = write_html(
            out / "report.html", f"herd bench: {results['label']}", to_markdown(results), pngs
        )
    return paths
