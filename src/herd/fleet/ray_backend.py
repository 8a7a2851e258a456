"""`herd serve --backend ray`: herd's replicas as one Ray Serve deployment (`ray_replica.HerdReplica`,
one actor per replica), sized by herd's autoscaling policy mapped onto Serve's
`autoscaling_config`, fronted by herd's gateway (Serve's proxy as its one upstream) or by Serve's
own HTTP proxy. Ray is imported only when this runs: the `ray` extra is optional."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.engine.config import EngineConfig
from herd.fleet.config import AutoscaleConfig, ServeConfig
from herd.fleet.serve import start_size
from herd.fleet.supervisor import free_port
from herd.gateway.app import Gateway, serve

log = logging.getLogger("herd.fleet.ray")

# herd's autoscaling settings that Ray Serve's request-based policy has no equivalent for.
# interval_s: Serve's replicas push their load every 10 s and it averages it over
# look_back_period_s (30 s), both Serve's defaults, kept: a shorter window warns and will fail.
UNMAPPED = ("interval_s", "tolerance", "warm_pool", "standby", "cooldown_s", "max_scale_up_step",
            "max_scale_down_step", "ttft_slo_s", "slo_attainment_target", "slo_window_s",
            "kv_usage_high", "cold_start_wait_s")  # fmt: skip


@dataclass
class RayOptions:
    """Where herd's Serve application runs and who fronts it. `address`: None starts a private
    local cluster in this process (gone when it exits), "auto" joins the cluster `ray start`
    made on this machine, or a GCS address / `ray://` URL. `ray_proxy`: Serve's HTTP proxy
    listens on the gateway's host and port instead of herd's gateway."""

    address: str | None = None
    ray_proxy: bool = False
    num_cpus: float = 0.5  # CPUs reserved per replica actor (its herd replica is a child process)
    app_name: str = "herd"


def ray_autoscaling_config(a: AutoscaleConfig, initial: int | None = None) -> dict[str, Any]:
    """herd's policy in Serve's words. Both count load as requests in flight or queued per
    replica, so `target_load` is `target_ongoing_requests`; herd's windows (scale to the lowest
    demand seen over the up window, the highest over the down window) become Serve's delays (act
    only once the wish has held that long); scale to zero waits `idle_timeout_s`."""
    config: dict[str, Any] = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_load,
        "upscale_delay_s": a.scale_up_window_s,
        "downscale_delay_s": a.scale_down_window_s,
    }
    if a.min_replicas == 0:
        config["downscale_to_zero_delay_s"] = a.idle_timeout_s
    if initial is not None:
        config["initial_replicas"] = min(max(initial, a.min_replicas), a.max_replicas)
    return config


def unmapped_settings(a: AutoscaleConfig) -> list[str]:
    """The settings given a non-default value that Ray Serve will not honour (warned about)."""
    default = AutoscaleConfig()
    return [name for name in UNMAPPED if getattr(a, name) != getattr(default, name)]


def actor_options(device: str, cluster_gpus: float, num_cpus: float) -> dict[str, Any]:
    """`ray_actor_options` for one replica: a whole GPU when the engine runs on CUDA (`auto`
    means CUDA when the cluster has GPUs), fractional CPUs, since the actor mostly forwards."""
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if device.startswith("cuda") or (device == "auto" and cluster_gpus > 0):
        options["num_gpus"] = 1
    return options


def deployment_options(
    config: ServeConfig, engine: EngineConfig, cluster_gpus: float, num_cpus: float
) -> dict[str, Any]:
    """The Serve deployment's options, each from the herd setting that means the same."""
    health = config.gateway.health
    options: dict[str, Any] = {
        "ray_actor_options": actor_options(engine.device, cluster_gpus, num_cpus),
        # Past the engine's batch, requests wait in Serve's router, where a freer (or new)
        # replica can take them, instead of in one replica's queue.
        "max_ongoing_requests": engine.scheduler.max_num_seqs,
        "graceful_shutdown_timeout_s": config.fleet.drain_timeout_s,
        "health_check_period_s": health.interval_s,
        "health_check_timeout_s": max(health.timeout_s, 5.0),
        # The gateway probes /ready every interval: a Serve access log line each is noise.
        "logging_config": {"enable_access_log": False},
    }
    if config.autoscale.enabled:
        options["autoscaling_config"] = ray_autoscaling_config(config.autoscale, start_size(config))
    else:
        options["num_replicas"] = config.fleet.replicas
    return options


def _runtime_env() -> dict[str, Any]:
    # Workers unpickle HerdReplica by reference, so herd must be importable there: on this
    # machine through the source root herd runs from; on other nodes herd must be installed.
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def _start_serve(host: str, port: int) -> tuple[str, bool]:
    """Serve's proxy URL, and whether this call started Serve. A Serve instance already running
    on the cluster keeps its proxy where it is (Ray ignores new HTTP options then)."""
    from ray import serve as ray_serve

    # Private, but the only way to read a running instance's proxy address (Ray is pinned).
    from ray.serve.context import _get_global_client

    running = _get_global_client(raise_if_no_controller_running=False)
    if running is None:
        ray_serve.start(http_options={"host": host, "port": port, "location": "HeadOnly"})
        return f"http://{host}:{port}", True
    http = running.http_config
    if (http.host, http.port) != (host, port):
        log.warning("ray: Serve already runs on this cluster; its proxy stays on %s:%d",
                    http.host, http.port)  # fmt: skip
    reach = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    return f"http://{reach}:{http.port}", False


def connect(options: RayOptions) -> None:
    """Join the cluster at `options.address`, or start a private one (no dashboard)."""
    import ray

    t0 = time.perf_counter()
    ray.init(address=options.address, namespace="herd", runtime_env=_runtime_env(),
             include_dashboard=False if options.address is None else None)  # fmt: skip
    log.info("ray: connected to the cluster in %.1f s", time.perf_counter() - t0)


def run_app(config: ServeConfig, engine: EngineConfig, options: RayOptions) -> None:
    """Deploy herd's application; returns once every replica is ready."""
    import ray
    from ray import serve as ray_serve

    from herd.fleet.ray_replica import HerdReplica

    gpus = ray.cluster_resources().get("GPU", 0.0)
    fleet = config.fleet
    deployment = ray_serve.deployment(HerdReplica, name="HerdReplica").options(
        **deployment_options(config, engine, gpus, options.num_cpus)
    )
    app = deployment.bind(
        fleet.model or "", fleet.extra_args, fleet.command or None,
        fleet.startup_timeout_s, fleet.drain_timeout_s,
    )  # fmt: skip
    t0 = time.perf_counter()
    ray_serve.run(app, name=options.app_name, route_prefix="/", blocking=False)
    log.info("ray: Serve application %r running in %.1f s", options.app_name,
             time.perf_counter() - t0)  # fmt: skip


def teardown(options: RayOptions, started_serve: bool) -> None:
    """Delete the application (its replicas drain through Serve's graceful shutdown), and Serve
    itself if this process started it; a cluster this process started goes with it."""
    import ray
    from ray import serve as ray_serve

    if not ray.is_initialized():
        return
    try:
        ray_serve.delete(options.app_name)
        if started_serve:
            ray_serve.shutdown()
    finally:
        ray.shutdown()


async def _front(
    config: ServeConfig, options: RayOptions, proxy_url: str, on_ready: Callable[[Gateway], object]
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if options.ray_proxy:
        print(f"herd serve: Ray Serve's proxy on {proxy_url} (no herd gateway)", flush=True)
        await stop.wait()
        return 0
    # Serve's proxy is one upstream that is a load balancer, not a replica: a replica dying under
    # it must not eject it, so a failure there only makes the gateway retry.
    config.gateway.upstreams = [proxy_url]
    config.gateway.health.eject_after = sys.maxsize
    gateway = Gateway(config.gateway)
    runner = await serve(gateway, config.gateway.host, config.gateway.port)
    try:
        deadline = time.monotonic() + config.fleet.startup_timeout_s
        while not gateway.replicas.ready() and time.monotonic() < deadline and not stop.is_set():
            await gateway.replicas.wait_change(1.0)  # the first /ready probe through Serve
        on_ready(gateway)
        await stop.wait()
        await gateway.drain(config.fleet.drain_timeout_s)
        return 0
    finally:
        await runner.cleanup()


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_ray_fleet(
    config: ServeConfig,
    engine: EngineConfig,
    options: RayOptions,
    on_ready: Callable[[Gateway], object],
) -> int:
    """`herd serve --backend ray` until SIGTERM / SIGINT; the exit status."""
    for name in unmapped_settings(config.autoscale) if config.autoscale.enabled else ():
        log.warning("autoscale.%s has no Ray Serve equivalent; ignored", name)
    gw = config.gateway
    host, port = (gw.host, gw.port) if options.ray_proxy else ("127.0.0.1", free_port("127.0.0.1"))
    started = False
    signal.signal(signal.SIGTERM, _exit)  # until the event loop takes over: tear down, not die
    try:
        connect(options)
        proxy_url, started = _start_serve(host, port)
        run_app(config, engine, options)
        return asyncio.run(_front(config, options, proxy_url, on_ready))
    finally:
        teardown(options, started)
