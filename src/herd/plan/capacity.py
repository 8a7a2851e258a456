"""How many replicas and GPUs a target load needs, from a saved `herd bench run` JSON.

Reads the bench file as plain JSON (schema herd.bench.run/1) so the planner does not depend
on the bench package: one replica's capacity is its best load level that still meets the SLO."""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class CapacityPlan:
    """How many replicas and GPUs a target load needs, from one replica's measured capacity (the
    best bench level within the SLO), with the cost per hour when a GPU price is given."""

    basis: str  # which bench level set the per-replica capacity, in words
    per_replica_rps: float
    per_replica_users: float
    target: str
    replicas: int
    gpus_per_replica: int
    gpus: int
    cost_per_hour: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def load_bench(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read bench results {path}: {exc}") from None
    if not str(data.get("schema", "")).startswith("herd.bench.run/"):
        raise ValueError(f"{path} is not a herd bench results file")
    return data


def _level_ok(level: dict, attainment: float) -> bool:
    reqs = level.get("requests", {})
    if not reqs.get("ok"):
        return False
    goodput = level.get("goodput") or {}
    if goodput.get("fraction") is not None:
        return goodput["fraction"] >= attainment
    return reqs.get("failed", 0) == 0


def best_level(bench: dict, attainment: float) -> dict | None:
    """The level with the highest request rate among those meeting the SLO attainment."""
    ok = [lv for lv in bench.get("levels", []) if _level_ok(lv, attainment)]
    return max(ok, key=lambda lv: lv["throughput"]["requests_per_s"], default=None)


def _concurrency(level: dict) -> float:
    load = level["load"]
    if load["kind"] == "concurrency":
        return float(load["value"])
    # Open-loop level: Little's law gives the mean number of requests in flight.
    e2e_s = (level.get("e2e_ms") or {}).get("mean", 0.0) / 1000
    return level["throughput"]["requests_per_s"] * e2e_s


def plan_capacity(
    bench: dict,
    target_rps: float | None = None,
    target_users: float | None = None,
    gpus_per_replica: int | None = None,
    gpu_hour_cost: float | None = None,
    attainment: float = 0.9,
) -> CapacityPlan:
    if (target_rps is None) == (target_users is None):
        raise ValueError("give exactly one of --target-rps or --target-users")
    level = best_level(bench, attainment)
    if level is None:
        raise ValueError(
            f"no level in the bench run meets the SLO for {attainment:.0%} of requests"
        )
    rps, users = level["throughput"]["requests_per_s"], _concurrency(level)
    if target_rps is not None:
        replicas, target = math.ceil(target_rps / rps), f"{target_rps:g} requests/s"
    else:
        replicas, target = math.ceil(target_users / max(users, 1e-9)), f"{target_users:g} users"
    per_replica = gpus_per_replica or int(bench.get("gpus") or 1)
    cost = gpu_hour_cost if gpu_hour_cost is not None else bench.get("gpu_hour_cost")
    gpus = max(1, replicas) * per_replica
    load = level["load"]
    return CapacityPlan(
        basis=f"{load['kind']}={load['value']:g} of {bench.get('label') or 'bench run'}",
        per_replica_rps=rps,
        per_replica_users=users,
        target=target,
        replicas=max(1, replicas),
        gpus_per_replica=per_replica,
        gpus=gpus,
        cost_per_hour=None if cost is None else gpus * float(cost),
    )
