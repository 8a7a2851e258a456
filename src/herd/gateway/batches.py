"""The gateway's Batch API: `herd.batch`'s routes over a store in `batch_dir`, owned by tenants
(the caller's API key's tenant; another tenant's ids are 404s). Each line goes through the
gateway's own path (model allowed, QoS class, content policy, dispatch over the replicas,
retries, answer screening, metrics and audit) at the least urgent priority of the keys file's
`batch` class (without one, `BATCH_PRIORITY`: after every class) and in a queue lane behind every
interactive waiter. Lines spend the key's token budgets (a spent budget pauses the batch) but not its rate
limits."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from herd.batch.objects import BATCH_PRIORITY
from herd.batch.routes import BatchRoutes, mount_off
from herd.batch.runner import BatchRunner
from herd.batch.store import BatchStore
from herd.gateway.admission import Admitted
from herd.gateway.auth import ANONYMOUS, ApiKey
from herd.gateway.errors import GatewayError
from herd.gateway.proxy import Outcome
from herd.gateway.qos import LONG_LANE, apply_class
from herd.gateway.request_info import parse_request

BATCH_CLASS = "batch"  # a keys file's class of this name is the one batch lines run in
BATCH_LANE = 2 * LONG_LANE  # queue rank added to batch lines: behind long prompts too


class BatchSender:
    """Sends one batch line as its batch's creator, through the gateway's normal path; returns
    (status, body) and never raises for a refusal (the runner records or retries it)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway  # the owning `Gateway` (not imported: herd.gateway.app imports this)

    def _key(self, principal: str) -> ApiKey | None:
        keys = self.gateway.auth.keys
        if keys is None:
            return ANONYMOUS
        return next((k for k in keys.values() if k.id == principal), None)

    async def send(self, batch: dict, body: dict, request_id: str) -> tuple[int, Any]:
        gw = self.gateway
        key = self._key(batch["principal"])
        if key is None:  # the key that created the batch was removed: its lines are refused
            err = GatewayError(401, "the batch's API key no longer exists", code="invalid_api_key")
            return err.status, err.body()
        outcome, headers, info, admitted = Outcome(), {"x-request-id": request_id}, None, None
        try:
            info = self._prepare(key, batch["endpoint"], body)
            await gw.policy_rules.check_prompt(info.prompt_text, gw.classes.of(key.qos_class))
            info.screen = gw.policy_rules.screen()
            admitted = await self._admit(key)
            response = await gw.proxy.forward(None, info, outcome, headers)
            return response.status, json.loads(response.body)
        except GatewayError as exc:
            outcome.status, outcome.error = exc.status, exc.message
            return exc.status, exc.body()
        finally:
            outcome.ttft_s = None  # batch latency is not the interactive TTFT autoscaling reads
            await gw._finish(key, info, admitted, outcome, headers)

    async def _admit(self, key: ApiKey) -> Admitted:
        """The deny list (403: an error line) and the key's token budgets (429: the runner
        retries, so a batch waits for the budget's reset or its window's end); tokens used are
        spent from the budgets at the end. Rate limits are the interactive traffic's: not taken."""
        gw = self.gateway
        gw.admission.check_denied(key, None)
        overrun = await gw.budgets.check(key)
        if overrun is not None:
            raise GatewayError(429, f"{overrun.message} (key {key.id!r})", code="budget_exceeded")
        return Admitted(key, key, None)

    def _prepare(self, key: ApiKey, endpoint: str, body: dict):
        gw = self.gateway
        raw = json.dumps(body).encode()
        info = parse_request(
            endpoint.removeprefix("/v1/"), raw, {}, gw.config.affinity.prefix_chars
        )
        gw.auth.authorize_model(key, info.model)
        batch_class = gw.classes.classes.get(BATCH_CLASS)
        cls = batch_class or gw.classes.of(key.qos_class)
        apply_class(info, cls, gw.config.max_tokens_default, gw.config.long_prompt_chars)
        # The declared batch class's least urgent value; without one, after every class (only
        # ever less urgent than a client may ask for, so no class's range is escaped upward).
        info.payload["priority"] = batch_class.priority[1] if batch_class else BATCH_PRIORITY
        info.body = json.dumps(info.payload).encode()
        info.route = dataclasses.replace(
            info.route, rank=info.route.rank + BATCH_LANE, version=gw.dispatcher.pick_version()
        )
        return info


def mount_batches(app: web.Application, gateway: Any) -> None:
    """Add /v1/files and /v1/batches to the gateway's app (404s naming the flag when off)."""
    config = gateway.config
    if not config.batch_dir:
        mount_off(app, "start the gateway with --batch-dir DIR")
        return
    store = BatchStore(config.batch_dir)
    runner = BatchRunner(store, BatchSender(gateway).send, config.batch_concurrency)

    def identify(request: web.Request) -> tuple[str, str]:
        key = gateway.auth.authenticate(request.headers)
        gateway.admission.check_denied(key, request.remote)
        return key.tenant, key.id

    routes = BatchRoutes(
        store, runner, identify, config.batch_max_file_bytes, config.proxy.body_timeout_s
    )
    routes.add_routes(app)

    async def start(_app: web.Application) -> None:
        runner.start()  # after the gateway's own start: its proxy exists

    async def stop(_app: web.Application) -> None:
        await runner.stop()  # before the gateway closes its session
        store.close()

    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)
