"""The gateway's HTTP application: the OpenAI routes, health, metrics and the admin API.

A completion request goes: authenticate → read and check the body → model allowed → QoS class
(priority, max_tokens) → content policy → deny list, budgets, limits → response cache → proxy to a
replica (answer screened) → settle usage, budgets, metrics, audit. Every path ends in exactly
one answer, and `_finish` runs for every request however it ended."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid

import aiohttp
from aiohttp import web

from herd.gateway.admin import Admin, FleetControl
from herd.gateway.admission import Admission, Admitted
from herd.gateway.audit import AuditLog
from herd.gateway.auth import ANONYMOUS, ApiKey, Authenticator, load_keys
from herd.gateway.batches import mount_batches
from herd.gateway.budgets import Budgets
from herd.gateway.cache import BYPASS_HEADER, ResponseCache
from herd.gateway.config import GatewayConfig
from herd.gateway.denylist import DenyList
from herd.gateway.dispatch import Dispatcher
from herd.gateway.errors import GatewayError
from herd.gateway.health import HealthChecker
from herd.gateway.load import LoadTracker
from herd.gateway.metrics import GatewayMetrics
from herd.gateway.policy import ContentPolicy
from herd.gateway.proxy import Outcome, Proxy
from herd.gateway.qos import QosClasses, apply_class, load_classes
from herd.gateway.ratelimit import MemoryLimiter, RedisLimiter
from herd.gateway.replicas import ReplicaSet
from herd.gateway.request_info import RequestInfo, parse_request
from herd.gateway.routing import make_policy
from herd.gateway.stream import replay
from herd.protocol import fleet_auth
from herd.protocol.deadlines import apply_head_deadline
from herd.protocol.errors import OpenAIError, error_middleware, log_refusal
from herd.protocol.openapi import build_openapi
from herd.protocol.tls import client_context, maybe_server_context

log = logging.getLogger(__name__)

# The statuses the gateway's generate routes answer besides 200 (its OpenAPI document).
GATEWAY_ERRORS = {
    "400": "Invalid request: the error names the parameter",
    "401": "Missing or unknown API key",
    "403": "The key may not use this model",
    "404": "Unknown model",
    "413": "Request body too large",
    "429": "Rate limited or queue full; retry after Retry-After seconds",
    "500": "Internal error",
    "502": "No replica answered",
    "503": "No replica ready, or draining; retry after Retry-After seconds",
    "504": "The replica did not answer in time",
}


class Gateway:
    """Owns every gateway part; `app()` builds the aiohttp application around it."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        h = config.health
        self.replicas = ReplicaSet(h.eject_after, h.backoff_base_s, h.backoff_max_s)
        for url in config.upstreams:
            self.replicas.add(url)
        a = config.affinity
        self.policy = make_policy(
            config.policy, load_factor=a.load_factor, virtual_nodes=a.virtual_nodes
        )
        self.metrics = GatewayMetrics()
        self.replicas.on_eject = lambda url: self.metrics.ejections.labels(url).inc()
        self.auth = Authenticator(None, config.admin_key)
        self.dispatcher = Dispatcher(self.replicas, self.policy, config.proxy)
        self.reload_keys()
        self.policy_rules = ContentPolicy(config.content_policy)
        self.fleet: FleetControl | None = None  # set by `herd serve`; None for a lone gateway
        self.admin = Admin(self)
        self.load = LoadTracker()  # what an autoscaler reads: arrivals, first-token latencies
        self.draining = False
        self.in_flight = 0
        self.session: aiohttp.ClientSession | None = None
        self.redis = None
        self.deny = DenyList()
        self.budgets = Budgets()
        self.admission = Admission(config, MemoryLimiter(), self.budgets, self.deny)
        self.admission.on_refused = lambda k, limit: self.metrics.rate_limited.labels(
            k, limit
        ).inc()
        self.cache: ResponseCache | None = None
        self.audit: AuditLog | None = None
        self.health: HealthChecker | None = None
        self.proxy: Proxy | None = None
        self._openapi_doc: dict | None = None

    def reload_keys(self) -> int:
        """(Re)read the keys file: keys and QoS classes together (ConfigError leaves both as
        they were). Returns the number of keys."""
        path = self.config.api_keys
        keys = load_keys(path) if path else None
        classes = load_classes(path) if path else QosClasses.builtin()
        self.auth.keys, self.classes = keys, classes
        self.dispatcher.shares = classes.shares()
        return len(keys or {})

    @property
    def limiter(self):
        """The rate limiter (in memory, or Redis once started with one)."""
        return self.admission.limiter

    # --- lifecycle ---

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                error_middleware(
                    self._refused, self.config.proxy.max_body_bytes, "internal gateway error", log
                )
            ],
            client_max_size=self.config.proxy.max_body_bytes,
        )
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        self.admin.add_routes(app)
        mount_batches(app, self)
        return app

    async def _start(self, _app: web.Application) -> None:
        p = self.config.proxy
        ssl = client_context(self.config.upstream_ca) if self.config.upstream_ca else True
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ssl=ssl)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=p.connect_timeout_s)
        # The fleet token rides on every request to a replica (completions, probes, scrapes);
        # it is never taken from the client, whose headers are not forwarded.
        token = self.config.fleet_token
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            headers={fleet_auth.HEADER: token} if token else None,
        )
        if self.config.redis:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(self.config.redis)
            self.admission.limiter = RedisLimiter(self.redis)
            self.budgets.redis = self.deny.redis = self.redis
            await self.deny.refresh()
            self.deny.start()
        self.cache = ResponseCache(self.config.cache, self.config.model_revision, self.redis)
        if self.config.audit.path:
            self.audit = AuditLog(self.config.audit)
            self.audit.start()
        self.policy_rules.session = self.session
        self.proxy = Proxy(self.session, self.dispatcher, p)
        self.proxy.on_retry = self.metrics.retries.inc
        self.health = HealthChecker(self.replicas, self.session, self.config.health)
        self.health.start()

    async def _stop(self, _app: web.Application) -> None:
        await self.health.stop()
        self.admin.stop()
        await self.deny.stop()
        if self.audit:
            await self.audit.stop()
        await self.session.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests and wait for those in flight (SIGTERM)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)

    # --- errors ---

    def _refused(self, request: web.Request, err: OpenAIError, rid: str | None = None):
        """Log and count a refusal (never the key or the body); returns `err`."""
        rid = rid or request.headers.get("x-request-id", "-")
        return log_refusal(log, self.metrics.rejected, request, err, rid)

    # --- completions ---

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "chat/completions")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "completions")

    async def _completion(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        outcome = Outcome()
        headers = {"x-request-id": request.headers.get("x-request-id") or uuid.uuid4().hex}
        key, info, admitted = ANONYMOUS, None, None
        self.in_flight += 1
        self.metrics.in_flight.inc()
        self.load.arrived()
        try:
            if self.draining:
                raise GatewayError(
                    503, "the gateway is shutting down", headers={"Retry-After": "1"}
                )
            key = self.auth.authenticate(request.headers)
            body = await self._read_body(request)
            info = parse_request(endpoint, body, request.headers, self.config.affinity.prefix_chars)
            info.route = dataclasses.replace(info.route, version=self.dispatcher.pick_version())
            self.auth.authorize_model(key, info.model)
            qos_class = self.classes.of(key.qos_class)
            apply_class(
                info, qos_class, self.config.max_tokens_default, self.config.long_prompt_chars
            )
            await self.policy_rules.check_prompt(info.prompt_text, qos_class)
            info.screen = self.policy_rules.screen()
            admitted = await self.admission.admit(key, request.remote, info, headers)
            response = await self._from_cache(request, key, info, headers, outcome)
            if response is None:
                response = await self.proxy.forward(request, info, outcome, headers)
                await self._store(outcome, headers)
            return response
        except GatewayError as exc:
            outcome.status, outcome.error = exc.status, exc.message
            exc.headers = {**headers, **exc.headers}
            return self._refused(request, exc, headers["x-request-id"]).response()
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            await self._finish(key, info, admitted, outcome, headers)

    async def _read_body(self, request: web.Request) -> bytes:
        """The body within `body_timeout_s` (408) and `max_body_bytes` (413, at once when the
        announced Content-Length is already too large)."""
        limit = self.config.proxy.max_body_bytes
        too_large = GatewayError(
            413, f"request body larger than {limit} bytes", code="request_too_large"
        )
        if (request.content_length or 0) > limit:
            raise too_large
        try:
            async with asyncio.timeout(self.config.proxy.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise GatewayError(
                408, "request body not received in time", code="request_timeout"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    async def _from_cache(self, request, key: ApiKey, info: RequestInfo, headers: dict, outcome):
        if request.headers.get(BYPASS_HEADER, "").lower() == "bypass":
            headers[BYPASS_HEADER] = "bypass"
            return None
        cache_key = self.cache.key_for(key.tenant, info)
        if cache_key is None:
            return None
        answer = await self.cache.get(cache_key)
        self.metrics.cache.labels("hit" if answer else "miss").inc()
        if answer is None:
            headers[BYPASS_HEADER] = "miss"
            outcome.cache_key = cache_key
            return None
        headers[BYPASS_HEADER] = "hit"
        usage = answer.get("usage") or {}
        outcome.status, outcome.response = 200, answer
        outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
        if not info.stream:
            return web.json_response(answer, headers=headers)
        opts = info.payload.get("stream_options") or {}
        body = replay(
            answer, info.endpoint, bool(isinstance(opts, dict) and opts.get("include_usage"))
        )
        return web.Response(body=body, content_type="text/event-stream", headers=headers)

    async def _store(self, outcome: Outcome, headers: dict) -> None:
        answer = outcome.response
        if not outcome.cache_key or answer is None or outcome.status != 200:
            return
        replica = self.replicas.get(outcome.replica or "")
        if replica is not None and replica.fallback_model is not None:
            return  # the fallback model's answer is not the main version's
        # Only whole answers: a choice without a finish reason was cut short.
        if all(c.get("finish_reason") for c in answer.get("choices", [])):
            await self.cache.put(outcome.cache_key, answer)

    async def _finish(
        self, key, info, admitted: Admitted | None, outcome: Outcome, headers: dict
    ) -> None:
        if outcome.prompt_tokens == 0 and info is not None and outcome.status == 200:
            outcome.prompt_tokens = info.reserve_tokens(self.config.proxy.chars_per_token, 0)
        used = outcome.prompt_tokens + outcome.completion_tokens if outcome.status == 200 else 0
        await self.admission.settle(admitted, used)
        replica = outcome.replica or ("cache" if headers.get(BYPASS_HEADER) == "hit" else "none")
        self.metrics.requests.labels(replica, str(outcome.status), key.id).inc()
        if outcome.status == 200 and outcome.replica:
            self.metrics.added_latency.observe(outcome.added_s)
        if outcome.ttft_s is not None:
            self.load.first_token(outcome.ttft_s)
        if self.audit is not None:
            await self.audit.record(**self._audit_fields(key, info, outcome, headers, replica))

    def _audit_fields(self, key, info, outcome: Outcome, headers: dict, replica: str) -> dict:
        fields = {
            "request_id": headers["x-request-id"],
            "key_id": key.id,
            "tenant": key.tenant,
            "model": info.model if info else None,
            "replica": replica,
            "status": outcome.status,
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "ttft_s": None if outcome.ttft_s is None else round(outcome.ttft_s, 6),
            "latency_s": round(time.perf_counter() - outcome.received_at, 6),
            "attempts": outcome.attempts,
            "error": outcome.error,
        }
        if outcome.filtered:
            fields["content_filter"] = True  # the answer was cut by the content policy
        if info is not None:
            fields["prompt"] = info.prompt_text
            fields["completion"] = _answer_text(outcome.response)
        return fields

    # --- other routes ---

    async def _models(self, request: web.Request) -> web.Response:
        try:
            key = self.auth.authenticate(request.headers)
            self.admission.check_denied(key, request.remote)
            for replica in self.replicas.ready():
                try:
                    timeout = aiohttp.ClientTimeout(total=self.config.health.timeout_s)
                    async with self.session.get(
                        replica.url + "/v1/models", timeout=timeout
                    ) as resp:
                        if resp.status == 200:
                            data = await resp.json()
                            data["data"] = [
                                m for m in data.get("data", []) if key.allows(m.get("id"))
                            ]
                            return web.json_response(data)
                except (aiohttp.ClientError, ValueError, OSError):
                    continue
            raise GatewayError(503, "no replica is ready", headers={"Retry-After": "2"})
        except GatewayError as exc:
            return self._refused(request, exc).response()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        # The replica's shape (`Status` in herd.protocol): one document describes both.
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        # An autoscaled fleet at zero still takes requests: it holds them while a replica starts.
        if not self.replicas.ready() and self.dispatcher.cold_wait_s is None:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ready"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = self.metrics.render(self.replicas, self.dispatcher.waiting)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _openapi(self, _request: web.Request) -> web.Response:
        if self._openapi_doc is None:  # built once: the models and statuses never change
            self._openapi_doc = build_openapi("herd gateway", None, None, GATEWAY_ERRORS)
        return web.json_response(self._openapi_doc)


def _answer_text(answer: dict | None) -> str | None:
    if not answer:
        return None
    parts = []
    for c in answer.get("choices", []):
        parts.append(c.get("text") or (c.get("message") or {}).get("content") or "")
    return "".join(parts)


async def serve(gateway: Gateway, host: str, port: int) -> web.AppRunner:
    """Start the gateway on host:port (HTTPS with a certificate configured); the caller cleans
    up with `await runner.cleanup()`. `TLSConfigError` for unusable certificate files."""
    c = gateway.config
    ssl_context = maybe_server_context(c.tls_cert, c.tls_key, c.tls_client_ca)
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
    await runner.setup()
    apply_head_deadline(runner, c.proxy.head_timeout_s)
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner
