"""Gateway settings: one dataclass per concern, loaded from a TOML or YAML file.

Every field has a one-line description; CLI flags override the common ones. Unknown keys in a
file are an error so a typo never silently falls back to a default."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad setting; the message names the key."""


@dataclass
class HealthConfig:
    """How replicas' health is judged: probe interval and timeout, failures that eject, the
    exponential ejection backoff, and whether /metrics is scraped."""

    interval_s: float = 1.0  # seconds between active /ready checks of each replica
    timeout_s: float = 2.0  # one health check or metrics scrape may take this long
    eject_after: int = 3  # consecutive failures (passive or active) that eject a replica
    backoff_base_s: float = 1.0  # first ejection lasts this long; doubles per repeat
    backoff_max_s: float = 30.0  # longest ejection before the next probe
    scrape_metrics: bool = True  # read replicas' /metrics for reported load and prefix hits

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.timeout_s <= 0 or self.eject_after < 1:
            raise ConfigError("health: interval_s, timeout_s > 0 and eject_after >= 1")


@dataclass
class ProxyConfig:
    """How requests are forwarded: attempts and the retry budget, connect / first-byte / idle
    timeouts, the body size limit, per-replica in-flight caps, the bounded wait queue, and the
    token estimate used to reserve rate-limit tokens at admission."""

    max_attempts: int = 3  # tries per request (first + retries) before the first byte is sent
    retry_budget_ratio: float = 0.2  # retries may add at most this share of the request rate
    retry_budget_min: int = 10  # retries always allowed in a burst, whatever the ratio
    connect_timeout_s: float = 2.0  # opening a connection to a replica
    first_byte_timeout_s: float = 120.0  # upstream silence before the first byte: retry elsewhere
    idle_timeout_s: float = 120.0  # upstream silence mid-stream: end the stream with an error
    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies get 413
    max_in_flight_per_replica: int = 256  # a replica at this many in-flight gets no more
    queue_size: int = 1024  # requests that may wait for a free replica; past it 429
    queue_timeout_s: float = 10.0  # longest wait for a replica; then 429 (503 if none ready)
    chars_per_token: float = 3.0  # prompt-size estimate used to reserve tokens at admission
    default_max_tokens: int = 256  # reserved when a request gives no max_tokens
    head_timeout_s: float = 10.0  # a client's request head must arrive within this (slowloris)
    body_timeout_s: float = 30.0  # a client's request body must arrive within this; then 408
    client_write_timeout_s: float = 30.0  # a client not reading its stream this long: abort it
    resume_streams: bool = True  # continue a herd replica's broken stream on another replica

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_in_flight_per_replica < 1 or self.queue_size < 0:
            raise ConfigError("proxy: max_attempts, max_in_flight_per_replica >= 1")
        for name in ("head_timeout_s", "body_timeout_s", "client_write_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"proxy: {name} must be > 0")


@dataclass
class CacheConfig:
    """The response cache's bounds (entries, entry size, TTL), whether it goes to Redis, and
    whether tenants may share it (off unless set on purpose)."""

    enabled: bool = True  # exact-match response cache for deterministic requests
    max_entries: int = 4096  # in-memory LRU bound
    max_entry_bytes: int = 256 * 1024  # larger responses are not cached
    ttl_s: float = 600.0  # entries expire after this long (also the Redis TTL)
    use_redis: bool = True  # with a Redis URL, share the cache between gateway instances
    shared_across_tenants: bool = False  # only on purpose: tenants would see each other's answers


@dataclass
class AuditConfig:
    """The audit log (herd.gateway.audit): where it goes (none: no log), when it rotates and how
    long rotated files stay, and which tenants' prompt and completion text is kept (in a
    separate file) and for how long."""

    path: str | None = None  # JSON-lines file, hash-chained; none: no audit log
    max_bytes: int = 100 * 1024 * 1024  # rotate when the file would grow past this
    rotate_daily: bool = True  # also rotate when the UTC day changes
    retention_days: float | None = 90.0  # rotated files older than this are deleted; none: kept
    include_text: bool = False  # keep prompt and completion text for every tenant
    text_tenants: list[str] = field(default_factory=list)  # tenants whose text is kept ("*": all)
    text_retention_days: float = 7.0  # daily text files older than this are deleted


@dataclass
class ContentPolicyConfig:
    """The content policy (herd.gateway.policy): deny patterns, an optional classifier endpoint,
    and whether answers are checked as well as prompts."""

    deny_patterns: list[str] = field(default_factory=list)  # regexes, case-insensitive
    check_output: bool = True  # also check answers (streams as they flow)
    classifier_url: str | None = (
        None  # an OpenAI-compatible .../moderations or .../chat/completions
    )
    classifier_model: str = ""  # the model named in classifier requests
    classifier_api_key: str | None = None  # sent as a bearer token to the classifier
    classifier_timeout_s: float = 5.0  # one classifier call may take this long
    classifier_every_chars: int = 256  # a stream is classified each time this much text arrived
    fail_closed: bool = False  # classifier unreachable: refuse (503) instead of allowing


@dataclass
class AnonymousConfig:
    """Limits on traffic without a keys file, per client address (the TCP peer's), with the same
    sliding-window semantics as a key's (0: unlimited)."""

    rpm: int = 0  # requests per minute per address
    tpm: int = 0  # tokens per minute per address
    concurrency: int = 0  # requests at once per address


@dataclass
class AffinityConfig:
    """Prefix-affinity routing: how many leading prompt characters key a request, how far above the
    mean load a replica may go before requests spill over, and the hash ring's virtual nodes per
    replica."""

    prefix_chars: int = 256  # leading prompt characters that key prefix_affinity
    load_factor: float = 1.25  # a replica may carry this multiple of the mean load before spilling
    virtual_nodes: int = 64  # points per replica on the hash ring


@dataclass
class DiscoveryConfig:
    """Where the gateway finds replicas that come and go (herd.gateway.discovery): a Kubernetes
    Service's EndpointSlices (`k8s://NAMESPACE/SERVICE:PORT`) or a headless Service's DNS name
    (`dns://HOST:PORT`); none: only the configured upstreams and /admin/replicas."""

    url: str | None = None  # k8s://NAMESPACE/SERVICE:PORT or dns://HOST:PORT; none: off
    dns_interval_s: float = 5.0  # dns: seconds between lookups
    watch_timeout_s: int = 300  # k8s: the API server ends each watch after this long; rewatch
    backoff_base_s: float = 0.5  # first wait after a failed list/watch/lookup; doubles per failure
    backoff_max_s: float = 30.0  # longest wait between attempts

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("k8s://", "dns://")):
            raise ConfigError(f"discovery.url must be k8s://... or dns://..., got {self.url!r}")
        if min(self.dns_interval_s, self.watch_timeout_s, self.backoff_base_s) <= 0:
            raise ConfigError("discovery: dns_interval_s, watch_timeout_s, backoff_base_s > 0")


@dataclass
class GatewayConfig:
    """Every setting of one gateway: listen address, routing policy, upstreams, keys, Redis, and
    the nested health, proxy, cache, audit, affinity and discovery settings. Validated on construction."""

    host: str = "127.0.0.1"  # address the gateway listens on
    port: int = 8000  # port the gateway listens on
    policy: str = "least_outstanding"  # round_robin, least_outstanding, prefix_affinity
    upstreams: list[str] = field(default_factory=list)  # replica base URLs (gateway alone)
    api_keys: str | None = None  # keys file; none: no authentication
    admin_key: str | None = None  # guards /admin/*; none: admin routes are off
    redis: str | None = None  # redis://host:port/db shared by gateway instances
    model_revision: str = ""  # part of the cache key: change it when weights change
    max_tokens_default: int | None = None  # forwarded when a request and its class give none
    long_prompt_chars: int | None = None  # longer prompts queue behind all shorter ones; none: off
    drain_timeout_s: float = 30.0  # herd gateway on SIGTERM: in-flight requests get this long
    tls_cert: str | None = None  # PEM certificate chain: the gateway speaks HTTPS
    tls_key: str | None = None  # the certificate's private key (PEM)
    tls_client_ca: str | None = None  # clients must present a certificate from this CA (mTLS)
    upstream_ca: str | None = None  # trust replicas' certificates signed by this CA (https://)
    # Sent to replicas as x-herd-fleet-token; `herd serve` makes a random one per fleet. Never
    # logged or shown: repr=False keeps it out of any printed config.
    fleet_token: str | None = field(default=None, repr=False)
    # Batch API (/v1/files, /v1/batches; herd.gateway.batches)
    batch_dir: str | None = None  # files and batch state (SQLite) live here; none: Batch API off
    batch_concurrency: int = 8  # batch lines in flight at once, over all replicas
    batch_max_file_bytes: int = 200 * 1024 * 1024  # largest file upload accepted
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    anonymous: AnonymousConfig = field(default_factory=AnonymousConfig)
    content_policy: ContentPolicyConfig = field(default_factory=ContentPolicyConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)

    def __post_init__(self) -> None:
        if self.batch_concurrency < 1 or self.batch_max_file_bytes < 1:
            raise ConfigError("batch_concurrency and batch_max_file_bytes must be >= 1")


def build_config(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a (nested) dataclass from a dict, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            kwargs[name] = build_config(sub, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (.toml) or YAML (anything else) file into a dict."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return data or {}
