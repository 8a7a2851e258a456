"""herd's settings mapped onto Ray Serve's deployment options: the autoscaling policy onto
`autoscaling_config`, the device onto `ray_actor_options`; checked against Ray Serve's own config
models where the `ray` extra is installed. No cluster is started here."""

import subprocess
import sys

import pytest

from herd.engine.config import EngineConfig
from herd.fleet.config import AutoscaleConfig, FleetConfig, ServeConfig
from herd.fleet.ray_backend import (
    actor_options,
    deployment_options,
    ray_autoscaling_config,
    unmapped_settings,
)


def test_policy_maps_onto_serve_names():
    a = AutoscaleConfig(enabled=True, min_replicas=2, max_replicas=7, target_load=5.0,
                        scale_up_window_s=4.0, scale_down_window_s=120.0)  # fmt: skip
    assert ray_autoscaling_config(a, initial=3) == {
        "min_replicas": 2,
        "max_replicas": 7,
        "target_ongoing_requests": 5.0,
        "upscale_delay_s": 4.0,
        "downscale_delay_s": 120.0,
        "initial_replicas": 3,
    }


def test_initial_replicas_stay_within_bounds_and_zero_waits_idle_timeout():
    a = AutoscaleConfig(min_replicas=0, max_replicas=3, idle_timeout_s=45.0)
    assert ray_autoscaling_config(a, initial=9)["initial_replicas"] == 3
    assert ray_autoscaling_config(a)["downscale_to_zero_delay_s"] == 45.0
    assert "initial_replicas" not in ray_autoscaling_config(a)
    assert "downscale_to_zero_delay_s" not in ray_autoscaling_config(AutoscaleConfig())


def test_settings_without_a_serve_equivalent_are_named():
    assert unmapped_settings(AutoscaleConfig()) == []
    a = AutoscaleConfig(warm_pool=1, tolerance=0.2, target_load=3.0, interval_s=0.5)
    assert unmapped_settings(a) == ["interval_s", "tolerance", "warm_pool"]


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("cpu", 8, {"num_cpus": 0.5}),
        ("cuda", 0, {"num_cpus": 0.5, "num_gpus": 1}),
        ("cuda:1", 2, {"num_cpus": 0.5, "num_gpus": 1}),
        ("auto", 4, {"num_cpus": 0.5, "num_gpus": 1}),
        ("auto", 0, {"num_cpus": 0.5}),
    ],
)
def test_one_gpu_per_replica_when_the_engine_runs_on_cuda(device, gpus, expected):
    assert actor_options(device, gpus, 0.5) == expected


def _serve_config(**autoscale) -> ServeConfig:
    return ServeConfig(fleet=FleetConfig(replicas=3, drain_timeout_s=25.0),
                       autoscale=AutoscaleConfig(**autoscale))  # fmt: skip


def test_fixed_size_without_autoscaling_and_drain_as_graceful_shutdown():
    engine = EngineConfig(model="m", device="cpu")
    options = deployment_options(_serve_config(), engine, cluster_gpus=0, num_cpus=0.25)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["graceful_shutdown_timeout_s"] == 25.0
    assert options["max_ongoing_requests"] == engine.scheduler.max_num_seqs
    assert options["ray_actor_options"] == {"num_cpus": 0.25}


def test_autoscaled_deployment_starts_at_the_fleet_size():
    config = _serve_config(enabled=True, min_replicas=1, max_replicas=5)
    options = deployment_options(config, EngineConfig(model="m"), cluster_gpus=0, num_cpus=0.5)
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["initial_replicas"] == 3


def test_ray_serve_accepts_the_options():
    """Ray Serve's own validators are the reference (skipped without the `ray` extra)."""
    pytest.importorskip("ray.serve")
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema

    for autoscale in (dict(enabled=True, min_replicas=0, max_replicas=4), dict(enabled=False)):
        options = deployment_options(_serve_config(**autoscale), EngineConfig(model="m"), 1, 0.5)
        DeploymentSchema(name="HerdReplica", **options)
        if "autoscaling_config" in options:
            parsed = AutoscalingConfig(**options["autoscaling_config"])
            assert parsed.target_ongoing_requests == AutoscaleConfig().target_load


def test_address_and_ray_proxy_need_the_ray_backend():
    done = subprocess.run(
        [sys.executable, "-m", "herd.cli", "serve", "--ray-proxy", "--model", "/nonexistent"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--backend ray" in done.stderr
