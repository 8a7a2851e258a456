"""`herd serve`'s settings: the local fleet, its autoscaler, and the gateway in front, read from one
TOML or YAML file with `[gateway]`, `[fleet]` and `[autoscale]` tables (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from herd.gateway.config import ConfigError, GatewayConfig, build_config, read_file


@dataclass
class FleetConfig:
    """The local fleet `herd serve` runs: model, number of replicas, the replica command, start-up
    and drain timeouts, restart backoff, and extra arguments passed to every replica."""

    model: str | None = None  # model directory; none: the demo model
    replicas: int = 2  # replicas to run on this machine (the start size when autoscaling)
    command: list[str] = field(
        default_factory=list
    )  # replica command template; {model} {host} {port}
    host: str = "127.0.0.1"  # replicas listen here
    startup_timeout_s: float = 300.0  # a replica not ready by then is killed and retried
    drain_timeout_s: float = 60.0  # SIGTERM'd replica gets this long before SIGKILL
    restart_backoff_base_s: float = 0.5  # first restart delay after a crash; doubles per crash
    restart_backoff_max_s: float = 30.0  # longest restart delay
    stable_after_s: float = 30.0  # up this long resets the crash backoff
    extra_args: list[str] = field(default_factory=list)  # appended to every replica command
    interruptible: bool = False  # spot capacity: an exit nobody asked for is replaced at once
    fallback_model: str | None = None  # a smaller model for requests the main pool cannot take
    fallback_replicas: int = 1  # replicas of the fallback model (with fallback_model set)
    fallback_args: list[str] = field(default_factory=list)  # replica arguments for the fallback
    fallback_after_s: float = 2.0  # a request that waited this long for the main pool falls back

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ConfigError("fleet: replicas must be >= 0")


@dataclass
class AutoscaleConfig:
    """How the fleet sizes itself (`herd serve --autoscale`): bounds, the load each replica is
    meant to carry, how fast it may grow and shrink, the warm pool, and scale to zero. The same
    values drive the local supervisor, the Helm chart's HPA and Ray Serve's autoscaling_config."""

    enabled: bool = False  # off: the fleet stays at fleet.replicas
    min_replicas: int = 1  # never fewer (0 allows scale to zero after idle_timeout_s)
    max_replicas: int = 4  # never more; past what they absorb, requests get 429 at once
    target_load: float = 8.0  # in-flight requests (running + queued) one ready replica should carry
    tolerance: float = 0.1  # scale down only while the rest would carry <= (1 - this) x target
    warm_pool: int = 0  # replicas kept loaded above current demand, to absorb a burst
    standby: int = 0  # replicas kept loaded but unrouted, promoted at once when needed
    idle_timeout_s: float = 300.0  # with min_replicas 0: no request for this long stops the last
    scale_up_window_s: float = 5.0  # scale up to the lowest demand seen over this window
    scale_down_window_s: float = 300.0  # scale down to the highest demand seen over this window
    cooldown_s: float = 30.0  # after any change, no scale-down for this long
    flap_hold_s: float = 1800.0  # a scale-down undone within the down window: not below that
    # size again for this long
    max_scale_up_step: int = 2  # most replicas added by one decision
    max_scale_down_step: int = 1  # most replicas removed by one decision
    interval_s: float = 1.0  # seconds between decisions
    ttft_slo_s: float = 2.0  # a request whose first token took longer missed the SLO
    slo_attainment_target: float = 0.9  # below this share within the SLO, add a replica
    slo_window_s: float = 30.0  # TTFT attainment is measured over this window, and counts only
    # once the ready replicas have been unchanged this long (older samples predate them)
    kv_usage_high: float = 0.9  # replicas' mean KV use above this counts as saturated
    cold_start_wait_s: float = 120.0  # at zero replicas a request waits this long, then 503

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ConfigError("autoscale: need 0 <= min_replicas <= max_replicas and max >= 1")
        if self.target_load <= 0 or self.interval_s <= 0:
            raise ConfigError("autoscale: target_load and interval_s must be > 0")
        if self.max_scale_up_step < 1 or self.max_scale_down_step < 1:
            raise ConfigError("autoscale: max_scale_up_step and max_scale_down_step must be >= 1")
        if self.slo_window_s < 0 or self.flap_hold_s < 0:
            raise ConfigError("autoscale: slo_window_s and flap_hold_s must be >= 0")
        if not 0 <= self.tolerance < 1:
            raise ConfigError("autoscale: tolerance must be in [0, 1)")
        if min(self.warm_pool, self.standby) < 0:
            raise ConfigError("autoscale: warm_pool and standby must be >= 0")


@dataclass
class ServeConfig:
    """`herd serve` in one object: the gateway's settings, the fleet's and the autoscaler's."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)


def load_serve_config(path: str | Path | None) -> ServeConfig:
    """A file with optional [gateway], [fleet] and [autoscale] tables; no file gives the defaults."""
    return build_config(ServeConfig, read_file(path) if path else {}, "")
