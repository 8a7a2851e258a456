"""Replica discovery (herd.gateway.discovery) against a fake Kubernetes API and real DNS.

No API server can be started here (see docs/deploy.md), so the Kubernetes source is tested
against an aiohttp server that replays EndpointSlice list and watch responses in the API's wire
format (k8s_api/endpointslices.json): list, then a watch stream of ADDED / MODIFIED / BOOKMARK /
DELETED events, then 410 Gone (as an ERROR event and as an HTTP status), which must relist.
DNS mode resolves real names (localhost, and a .invalid name that never resolves)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import web
from gwtools import free_port

from herd.gateway.config import ConfigError, DiscoveryConfig, GatewayConfig
from herd.gateway.discovery import (
    DnsDiscovery,
    Membership,
    Target,
    make_discovery,
    parse_target,
)
from herd.gateway.replicas import ReplicaSet, ReplicaState
from waiting import until

RECORDED = json.loads((Path(__file__).with_name("k8s_api") / "endpointslices.json").read_text())
PATH = "/apis/discovery.k8s.io/v1/namespaces/llm/endpointslices"
FAST = DiscoveryConfig(
    url="k8s://llm/rel-herd-replica:8000", backoff_base_s=0.01, backoff_max_s=0.05
)


class FakeApi:
    """Replays scripted answers: `lists` for list calls (the last one repeats), `watches` for
    watch calls, each a status + body or a queue of events streamed until None. Records every
    request's query and Authorization header."""

    def __init__(self):
        self.lists: list[dict] = []
        self.watches: list[tuple[int, dict] | asyncio.Queue] = []
        self.requests: list[tuple[dict, str | None]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.closing = asyncio.Event()  # ends idle watches, so cleanup does not wait on them

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, watch: bool) -> list[dict]:
        return [q for q, _ in self.requests if ("watch" in q) == watch]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((query, request.headers.get("Authorization")))
        assert query["labelSelector"] == "kubernetes.io/service-name=rel-herd-replica"
        if "watch" not in query:
            body = self.lists[0] if len(self.lists) == 1 else self.lists.pop(0)
            return web.json_response(body)
        if not self.watches:
            await self.closing.wait()  # an idle watch, like a quiet API server
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        script = self.watches.pop(0)
        if isinstance(script, tuple):
            return web.json_response(script[1], status=script[0])
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        while (event := await _next(script, self.closing)) is not None:
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response


async def _next(queue: asyncio.Queue, closing: asyncio.Event) -> dict | None:
    get, closed = asyncio.ensure_future(queue.get()), asyncio.ensure_future(closing.wait())
    await asyncio.wait([get, closed], return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    if not get.done():
        get.cancel()
        return None
    return get.result()


@pytest.fixture
async def api():
    fake = FakeApi()
    await fake.start()
    yield fake
    fake.closing.set()
    await fake.runner.cleanup()


@pytest.fixture
def credentials(tmp_path):
    (tmp_path / "token").write_text("token-1\n")
    return tmp_path


def states(replicas: ReplicaSet) -> dict[str, str]:
    return {r.url: r.state.value for r in replicas.all()}


def test_parse_target():
    assert parse_target("k8s://llm/rel-herd-replica:8000") == Target(
        "k8s", "rel-herd-replica", "8000", "llm"
    )
    assert parse_target("k8s://llm/svc:http").port == "http"
    assert parse_target("dns://svc.llm.svc.cluster.local:8000") == Target(
        "dns", "svc.llm.svc.cluster.local", "8000"
    )
    assert parse_target("dns://[::1]:8000").host == "::1"
    for bad in ("k8s://llm/svc", "k8s:///svc:80", "dns://host", "consul://x:1", "svc:80"):
        with pytest.raises(ConfigError):
            parse_target(bad)
    with pytest.raises(ConfigError):
        GatewayConfig(discovery=DiscoveryConfig(url="http://x:1"))


async def test_membership_adds_drains_removes_and_leaves_static_upstreams():
    replicas = ReplicaSet()
    replicas.add("http://static:1", ReplicaState.READY)
    m = Membership(replicas)
    m.apply({"http://a:1", "http://b:1", "http://static:1"}, set())
    assert states(replicas) == {
        "http://static:1": "ready",
        "http://a:1": "loading",
        "http://b:1": "loading",
    }
    replicas.set_state("http://a:1", ReplicaState.READY)
    m.apply({"http://b:1"}, {"http://a:1", "http://static:1"})
    assert replicas.get("http://a:1").state is ReplicaState.DRAINING
    assert replicas.get("http://a:1").locked  # health checks leave it draining
    assert replicas.get("http://static:1").state is ReplicaState.READY  # not discovery's
    m.apply({"http://a:1"}, set())  # the address is back (a new pod): loading again
    assert replicas.get("http://a:1").state is ReplicaState.LOADING
    assert not replicas.get("http://a:1").locked
    m.apply(set(), set())
    assert states(replicas) == {"http://static:1": "ready"}


async def test_list_watch_events_and_relist_on_410(api, credentials):
    api.lists = [RECORDED["list_first"], RECORDED["list_after_gone"]]
    stream = asyncio.Queue()
    api.watches = [stream]
    replicas = ReplicaSet()
    d = make_discovery(FAST, replicas, api_url=api.url, credentials=credentials)
    d.start()
    try:
        # The list: one ready endpoint; the not-ready one is not a candidate yet.
        await until(lambda: states(replicas) == {"http://10.4.0.11:8000": "loading"})
        replicas.set_state("http://10.4.0.11:8000", ReplicaState.READY)
        events = RECORDED["watch_events"]
        await stream.put(events[0])  # MODIFIED: the second endpoint turned ready
        await until(lambda: "http://10.4.0.12:8000" in states(replicas))
        await stream.put(events[1])  # ADDED: a second slice, IPv6
        await until(lambda: "http://[fd00::13]:8000" in states(replicas))
        await stream.put(events[2])  # MODIFIED: the first endpoint is terminating
        await until(lambda: states(replicas)["http://10.4.0.11:8000"] == "draining")
        await stream.put(events[3])  # BOOKMARK: only the resourceVersion moves
        await until(lambda: d.resource_version == "1005")
        await stream.put(events[4])  # DELETED: the first slice and its endpoints are gone
        await until(lambda: states(replicas) == {"http://[fd00::13]:8000": "loading"})
        assert d.resource_version == "1006"
        # History compacted: an ERROR event with 410 makes it list again, then watch from there.
        await stream.put(RECORDED["watch_gone_event"])
        await until(lambda: len(api.calls(watch=False)) == 2, what="a relist")
        await until(lambda: states(replicas) == {"http://10.4.0.21:8000": "loading"})
        await until(lambda: len(api.calls(watch=True)) == 2)
        assert api.calls(watch=True)[0]["resourceVersion"] == "1001"
        assert api.calls(watch=True)[1]["resourceVersion"] == "2001"
        assert api.calls(watch=True)[0]["allowWatchBookmarks"] == "true"
        assert {auth for _, auth in api.requests} == {"Bearer token-1"}
    finally:
        await d.stop()


async def test_http_410_at_watch_start_relists(api, credentials):
    api.lists = [RECORDED["list_first"], RECORDED["list_after_gone"]]
    api.watches = [(410, RECORDED["gone_status"])]
    replicas = ReplicaSet()
    d = make_discovery(FAST, replicas, api_url=api.url, credentials=credentials)
    d.start()
    try:
        await until(lambda: states(replicas) == {"http://10.4.0.21:8000": "loading"})
        assert len(api.calls(watch=False)) == 2
        assert d.failures == 0  # a 410 is routine, not a failure
    finally:
        await d.stop()


async def test_errors_back_off_and_reconnect_with_a_fresh_token(api, credentials):
    forbidden = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no"}
    api.lists = [RECORDED["list_first"]]
    stream = asyncio.Queue()
    api.watches = [(500, {"kind": "Status", "code": 500}), (403, forbidden), stream]
    replicas = ReplicaSet()
    d = make_discovery(FAST, replicas, api_url=api.url, credentials=credentials)
    d.start()
    try:
        await until(lambda: d.failures == 2, what="two failed watches")
        (credentials / "token").write_text("token-2")  # the kubelet rotated the token
        await until(lambda: len(api.calls(watch=True)) == 3)
        # The same resourceVersion after errors (no needless relist); the new token is used.
        assert {q["resourceVersion"] for q in api.calls(watch=True)} == {"1001"}
        assert len(api.calls(watch=False)) == 1
        await until(lambda: api.requests[-1][1] == "Bearer token-2")
        assert states(replicas) == {"http://10.4.0.11:8000": "loading"}
        await stream.put(RECORDED["watch_events"][0])
        await until(lambda: d.failures == 0 and len(replicas.all()) == 2)
    finally:
        await d.stop()


async def test_a_malformed_event_is_retried_not_fatal(api, credentials):
    api.lists = [RECORDED["list_first"]]
    first, second = asyncio.Queue(), asyncio.Queue()
    api.watches = [first, second]
    replicas = ReplicaSet()
    d = make_discovery(FAST, replicas, api_url=api.url, credentials=credentials)
    d.start()
    try:
        await until(lambda: len(replicas.all()) == 1)
        await first.put({"type": "MODIFIED", "object": {"kind": "EndpointSlice"}})  # no metadata
        await until(lambda: len(api.calls(watch=True)) == 2, what="a new watch after the error")
        assert d.failures == 1
        await second.put(RECORDED["watch_events"][0])
        await until(lambda: len(replicas.all()) == 2 and d.failures == 0)
    finally:
        await d.stop()


async def test_large_events_split_across_reads(api, credentials):
    """One watch event of ~1 MB (100 endpoints, large managedFields): aiohttp's readline fails
    on it (checked), the discovery's own line splitter must not."""
    big = json.loads(json.dumps(RECORDED["watch_events"][0]))
    template = big["object"]["endpoints"][0]
    big["object"]["endpoints"] = [
        {**template, "addresses": [f"10.9.{i // 250}.{i % 250 + 1}"]} for i in range(100)
    ]
    big["object"]["metadata"]["managedFields"] = [{"manager": "x" * 1_000_000}]
    api.lists = [RECORDED["list_first"]]
    stream = asyncio.Queue()
    api.watches = [stream]
    replicas = ReplicaSet()
    d = make_discovery(FAST, replicas, api_url=api.url, credentials=credentials)
    d.start()
    try:
        await until(lambda: len(replicas.all()) == 1)
        await stream.put(big)
        await stream.put(RECORDED["watch_events"][1])
        await until(lambda: len(replicas.all()) == 101, what="100 endpoints + the IPv6 one")
        assert d.failures == 0
    finally:
        await d.stop()


async def test_named_port_comes_from_the_slice(api, credentials):
    api.lists = [RECORDED["list_first"]]
    replicas = ReplicaSet()
    config = DiscoveryConfig(url="k8s://llm/rel-herd-replica:http")
    d = make_discovery(config, replicas, api_url=api.url, credentials=credentials)
    d.start()
    try:
        await until(lambda: states(replicas) == {"http://10.4.0.11:8000": "loading"})
    finally:
        await d.stop()


def test_k8s_outside_a_pod_is_a_config_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        make_discovery(FAST, ReplicaSet())


async def test_dns_finds_localhost_and_drops_a_name_that_vanishes():
    replicas = ReplicaSet()
    config = DiscoveryConfig(url="dns://localhost:8123", dns_interval_s=0.02)
    d = make_discovery(config, replicas)
    assert isinstance(d, DnsDiscovery)
    d.start()
    try:
        await until(lambda: "http://127.0.0.1:8123" in states(replicas))
        # NXDOMAIN is what a headless Service with no ready pod answers: no replicas.
        d.target = parse_target("dns://herd-no-such-name.invalid:8123")
        await until(lambda: not replicas.all(), what="replicas removed")
        assert d.failures == 0
    finally:
        await d.stop()


async def test_gateway_cli_discovers_a_replica_over_dns(fakes):
    """`herd gateway --discover dns://localhost:PORT` finds a running (fake) replica, admits it
    through its health checks and serves through it."""
    port = free_port()
    upstream = fakes[0].port
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from herd.cli import main; sys.exit(main())",
        "gateway",
        "--port",
        str(port),
        "--discover",
        f"dns://localhost:{upstream}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        import aiohttp

        async def ready() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{port}/ready") as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, 30, "gateway ready through a discovered replica")
        async with aiohttp.ClientSession() as s:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize(
    "url, message",
    [
        ("consul://x:1", "unknown scheme"),
        ("dns://nohost", "expected dns://HOST:PORT"),
        ("k8s://llm/svc:8000", "KUBERNETES_SERVICE_HOST"),
    ],
)
def test_gateway_cli_refuses_a_bad_discovery_url(url, message, capsys, monkeypatch):
    from herd.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["gateway", "--port", "0", "--discover", url]) == 2
    assert message in capsys.readouterr().err
