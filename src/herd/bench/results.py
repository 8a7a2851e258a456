"""The results document of a run (schema herd.bench.run/1): build, save, load.

The schema is described field by field in SCHEMA.md next to this module; bump SCHEMA_VERSION when a
field changes meaning, and keep load() accepting older versions it can read."""

import datetime as dt
import json
import platform
from dataclasses import asdict
from pathlib import Path

from herd.bench.config import BenchConfig

SCHEMA = "herd.bench.run"
SCHEMA_VERSION = 1


class ResultsError(ValueError):
    """A file that is not a herd bench results document (or a newer one than we read)."""


def build_results(
    cfg: BenchConfig, model: str, dataset: dict, tokenizer: dict, levels: list[dict]
) -> dict:
    warnings = [tokenizer["note"]] if tokenizer.get("note") else []
    for level in levels:
        warnings += [
            f"{level['load']['kind']}={level['load']['value']:g}: {w}"
            for w in level["client"]["warnings"]
        ]
        if level["tokens"]["source"] not in (None, "usage"):
            warnings.append(
                f"{level['load']['kind']}={level['load']['value']:g}: server sent no usage; "
                f"token counts from the {level['tokens']['source']} tokenizer"
            )
    target = asdict(cfg.target)
    target.pop("api_key")  # never write secrets to results files
    target["model"] = model
    return {
        "schema": f"{SCHEMA}/{SCHEMA_VERSION}",
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": cfg.label or model,
        "host": platform.node(),
        "target": target,
        "workload": {**asdict(cfg.workload), **dataset},
        "tokenizer": tokenizer,
        "limits": asdict(cfg.limits),
        "slo": cfg.slo.to_dict(),
        "gpus": cfg.cost.gpus,
        "gpu_hour_cost": cfg.cost.gpu_hour_cost,
        "sweep": asdict(cfg.sweep) if cfg.sweep.enabled else None,
        "levels": levels,
        "warnings": warnings,
    }


def save_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None
    schema = str(data.get("schema", ""))
    if not schema.startswith(SCHEMA + "/"):
        raise ResultsError(f"{path} is not a herd bench results file")
    if data.get("schema_version", 0) > SCHEMA_VERSION:
        raise ResultsError(f"{path} has schema {schema}; this herd reads up to {SCHEMA_VERSION}")
    data.setdefault("label", path.parent.name)
    return data
