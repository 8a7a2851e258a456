"""Replica discovery: keeps the gateway's `ReplicaSet` in step with replicas that come and go,
found through the Kubernetes API (a watch of a Service's EndpointSlices) or a headless Service's
DNS name. What it finds is a candidate only: new replicas enter LOADING and the health checker
admits them; terminating endpoints turn DRAINING (no new traffic); vanished ones are removed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from herd.gateway.background import BackgroundTask
from herd.gateway.config import ConfigError, DiscoveryConfig
from herd.gateway.replicas import ReplicaSet, ReplicaState

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Target:
    """Where replicas are found: `k8s://NAMESPACE/SERVICE:PORT` (PORT a number, or a port name
    looked up in the EndpointSlices) or `dns://HOST:PORT`."""

    scheme: str  # "k8s" or "dns"
    host: str  # the Service name (k8s) or the DNS name (dns)
    port: str  # a number, or (k8s only) the name of an EndpointSlice port
    namespace: str = ""  # k8s only


def parse_target(url: str) -> Target:
    """The discovery URL as a `Target`; a `ConfigError` naming what is wrong otherwise."""
    parts = urlsplit(url)
    host, _, port = parts.netloc.rpartition(":") if parts.scheme == "dns" else ("", "", "")
    if parts.scheme == "dns":
        if not host or not port.isdigit():
            raise ConfigError(f"discovery: expected dns://HOST:PORT, got {url!r}")
        return Target("dns", host.strip("[]"), port)
    if parts.scheme == "k8s":
        service, _, port = parts.path.lstrip("/").partition(":")
        if not parts.netloc or not service or "/" in service or not port:
            raise ConfigError(f"discovery: expected k8s://NAMESPACE/SERVICE:PORT, got {url!r}")
        return Target("k8s", service, port, parts.netloc)
    raise ConfigError(f"discovery: unknown scheme in {url!r}; use k8s:// or dns://")


def replica_url(address: str, port: int | str) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


class Membership:
    """Applies one discovered view to the replica set. It touches only replicas it added itself,
    so upstreams from the config or /admin/replicas are never removed by discovery."""

    def __init__(self, replicas: ReplicaSet):
        self.replicas = replicas
        self.managed: set[str] = set()

    def apply(self, ready: set[str], terminating: set[str]) -> None:
        for url in sorted(ready):
            known = self.replicas.get(url)
            if known is None or (url in self.managed and known.state is ReplicaState.DRAINING):
                self.replicas.add(url, ReplicaState.LOADING).locked = False
                self.managed.add(url)
                log.info("discovery: replica %s appeared", url)
        for url in sorted(terminating & self.managed):
            replica = self.replicas.get(url)
            if replica is not None and replica.state is not ReplicaState.DRAINING:
                replica.locked = True  # health checks must not make it ready again
                self.replicas.set_state(url, ReplicaState.DRAINING)
                log.info("discovery: replica %s is terminating; draining", url)
        for url in sorted(self.managed - ready - terminating):
            self.replicas.remove(url)
            self.managed.discard(url)
            log.info("discovery: replica %s is gone", url)


class Discovery(BackgroundTask):
    """The background task of one discovery source: runs `_sync` forever, waiting with
    exponential backoff after a failure; `start` / `stop` like the health checker."""

    task_name = "herd-discovery"

    def __init__(self, membership: Membership, config: DiscoveryConfig):
        self.membership = membership
        self.config = config
        self.failures = 0  # consecutive failed attempts (for the backoff and for tests)

    async def _run(self) -> None:
        while True:
            try:
                await self._sync()
            # KeyError / TypeError: a malformed object from the API; retry, never end the task.
            except (
                aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError, ApiError
            ) as exc:  # fmt: skip
                self.failures += 1
                delay = min(
                    self.config.backoff_base_s * 2 ** min(self.failures - 1, 30),
                    self.config.backoff_max_s,
                )
                log.warning("discovery: %s; retrying in %.1f s", exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _sync(self) -> None:
        raise NotImplementedError


class DnsDiscovery(Discovery):
    """A headless Service's name resolved every `dns_interval_s`: each address is a ready
    replica (Kubernetes publishes only ready pods); an address that disappears is removed."""

    def __init__(self, target: Target, membership: Membership, config: DiscoveryConfig):
        super().__init__(membership, config)
        self.target = target

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.target.host, int(self.target.port), type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            # A headless Service with no ready pod has no name at all: no replicas, not an error.
            if exc.errno not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                raise
            infos = []
        self.failures = 0
        ready = {replica_url(info[4][0], self.target.port) for info in infos}
        self.membership.apply(ready, set())
        await asyncio.sleep(self.config.dns_interval_s)


class ApiError(Exception):
    """The Kubernetes API answered with an error status (a watch's ERROR event included)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


class KubernetesDiscovery(Discovery):
    """Lists, then watches, the EndpointSlices labelled `kubernetes.io/service-name=SERVICE`
    with the pod's service-account token. A watch resumes from the last resourceVersion; 410 Gone
    (history compacted) relists. Endpoints ready → replicas; terminating → draining."""

    def __init__(
        self,
        target: Target,
        membership: Membership,
        config: DiscoveryConfig,
        api_url: str | None = None,
        credentials: Path = SERVICE_ACCOUNT,
    ):
        super().__init__(membership, config)
        self.target = target
        self.api_url = api_url or _in_cluster_url()
        self.credentials = credentials
        self.slices: dict[str, dict] = {}  # EndpointSlice name -> object
        self.resource_version: str | None = None  # None: list before watching

    @property
    def _path(self) -> str:
        t = self.target
        return f"/apis/discovery.k8s.io/v1/namespaces/{t.namespace}/endpointslices"

    def _params(self) -> dict[str, str]:
        return {"labelSelector": f"kubernetes.io/service-name={self.target.host}"}

    async def _sync(self) -> None:
        # A fresh session per attempt: the token file is re-read (bound tokens rotate).
        async with self._session() as session:
            if self.resource_version is None:
                await self._list(session)
            await self._watch(session)

    def _session(self) -> aiohttp.ClientSession:
        headers = {"Accept": "application/json"}
        token = self.credentials / "token"
        if token.is_file():
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        ca = self.credentials / "ca.crt"
        ssl_context = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=self.config.watch_timeout_s + 30
        )
        return aiohttp.ClientSession(
            base_url=self.api_url,
            headers=headers,
            timeout=timeout,
            connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None,
        )

    async def _list(self, session: aiohttp.ClientSession) -> None:
        async with session.get(self._path, params=self._params()) as resp:
            body = await _checked_json(resp)
        self.slices = {s["metadata"]["name"]: s for s in body.get("items") or []}
        self.resource_version = body["metadata"]["resourceVersion"]
        self.failures = 0
        self._publish()

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        params = {
            **self._params(),
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(self.config.watch_timeout_s),
        }
        try:
            async with session.get(self._path, params=params) as resp:
                if resp.status != 200:
                    await _checked_json(resp)
                async for line in _lines(resp.content):
                    self._event(json.loads(line))
        except ApiError as exc:
            if exc.status != 410:
                raise
            log.info("discovery: watch history expired (410 Gone); listing again")
            self.resource_version = None

    def _event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(obj.get("code") or 500), obj.get("message") or obj.get("reason", ""))
        self.resource_version = obj["metadata"]["resourceVersion"]
        if kind == "BOOKMARK":
            return
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.slices.pop(name, None)
        else:  # ADDED or MODIFIED: the whole slice as it is now
            self.slices[name] = obj
        self.failures = 0
        self._publish()

    def _publish(self) -> None:
        ready: set[str] = set()
        terminating: set[str] = set()
        for s in self.slices.values():
            if s.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
                continue
            port = self._port(s)
            if port is None:
                continue
            for endpoint in s.get("endpoints") or []:
                conditions = endpoint.get("conditions") or {}
                # The API: a missing `ready` is unknown and should be taken as ready.
                if conditions.get("terminating"):
                    into = terminating
                elif conditions.get("ready", True):
                    into = ready
                else:
                    continue  # not ready yet: the health checker needs not see it
                into.update(replica_url(a, port) for a in endpoint.get("addresses") or [])
        self.membership.apply(ready, terminating - ready)

    def _port(self, endpoint_slice: dict) -> int | None:
        if self.target.port.isdigit():
            return int(self.target.port)
        for p in endpoint_slice.get("ports") or []:
            if p.get("name") == self.target.port:
                return p.get("port")
        return None


async def _lines(stream: aiohttp.StreamReader, limit: int = 64 << 20):
    """Non-empty lines of a watch stream. Not `readline`: it fails on a line past the stream's
    buffer limit (measured: a 1 MB event), and an EndpointSlice event (up to 100 endpoints plus
    managedFields) has no such bound."""
    buf = b""
    async for chunk in stream.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if len(buf) > limit:
            raise ValueError(f"a watch event longer than {limit} bytes")
    if buf.strip():
        yield buf


async def _checked_json(resp: aiohttp.ClientResponse) -> dict:
    text = await resp.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = {"message": text[:200]}
    if resp.status != 200:
        raise ApiError(resp.status, body.get("message") or body.get("reason") or "")
    return body


def _in_cluster_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError("discovery k8s://: not in a pod (KUBERNETES_SERVICE_HOST is unset)")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def make_discovery(config: DiscoveryConfig, replicas: ReplicaSet, **kwargs) -> Discovery:
    """The discovery task for `config.url` (not started); `kwargs` reach KubernetesDiscovery
    (api_url, credentials), for tests and for running outside a pod."""
    target = parse_target(config.url or "")
    membership = Membership(replicas)
    if target.scheme == "dns":
        return DnsDiscovery(target, membership, config)
    return KubernetesDiscovery(target, membership, config, **kwargs)
