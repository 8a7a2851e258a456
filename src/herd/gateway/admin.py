"""The gateway's admin API (`/admin/*`, admin key only): list, add and remove replicas, rollouts
(a restart, or a new version with a canary share, then promote or abort), the autoscaler's
state, the deny list (keys by id, client addresses or networks) and a keys file reload. Every
change (POST / DELETE) is audited with the admin key's id, its body and its answer's status. What a managed fleet must offer is the `FleetControl` protocol; the gateway alone has none."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from herd.gateway.config import ConfigError
from herd.gateway.errors import GatewayError
from herd.gateway.replicas import ReplicaState


class FleetControl(Protocol):
    """What a fleet that manages the gateway's replicas offers its admin API. Each coroutine
    returns a JSON-ready result and raises `GatewayError` for a request it cannot honour."""

    async def rollout(self, spec: dict[str, Any] | None) -> dict: ...  # None: restart as is

    async def promote(self) -> dict: ...  # the canary's version replaces the old

    async def abort(self) -> dict: ...  # the canary's replicas go, the old version stays

    def autoscaler(self) -> dict | None: ...  # GET /admin/autoscaler; None: not autoscaled


class Admin:
    """The admin routes over one gateway; every handler checks the admin key first. One fleet
    operation (rollout, promote, abort) runs at a time; `?wait=1` waits for its result."""

    def __init__(self, gateway: Any):
        self.gw = gateway  # the owning `Gateway` (not imported: herd.gateway.app imports this)
        self._task: asyncio.Task | None = None

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/admin/replicas", self._guard(self._list))
        r.add_post("/admin/replicas", self._guard(self._add))
        r.add_delete("/admin/replicas", self._guard(self._remove))
        r.add_post("/admin/rollout", self._guard(self._rollout))
        r.add_post("/admin/rollout/promote", self._guard(self._promote))
        r.add_post("/admin/rollout/abort", self._guard(self._abort))
        r.add_get("/admin/autoscaler", self._guard(self._autoscaler))
        r.add_get("/admin/deny", self._guard(self._deny_list))
        r.add_post("/admin/deny", self._guard(self._deny_add))
        r.add_delete("/admin/deny", self._guard(self._deny_remove))
        r.add_post("/admin/keys/reload", self._guard(self._reload_keys))

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.gw.auth.check_admin(request.headers)  # refusals leave via the error middleware
            if request.method == "GET":
                return await handler(request)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except GatewayError as exc:
                status = exc.status
                raise
            finally:
                await self._audit(request, status)

        return guarded

    async def _audit(self, request: web.Request, status: int) -> None:
        if self.gw.audit is None:
            return
        body = None
        if request.body_exists:
            try:
                body = json.loads(await request.read() or b"null")
            except ValueError:
                body = "<not JSON>"
        await self.gw.audit.admin(
            admin=self.gw.auth.admin_id,
            action=f"{request.method} {request.path}",
            query=dict(request.query) or None,
            body=body,
            status=status,
        )

    async def _reload_keys(self, _request: web.Request) -> web.Response:
        try:
            count = self.gw.reload_keys()
        except ConfigError as exc:
            raise GatewayError(
                400, f"keys file not reloaded: {exc}", code="bad_keys_file"
            ) from None
        return web.json_response({"keys": count, "classes": sorted(self.gw.classes.classes)})

    async def _list(self, _request: web.Request) -> web.Response:
        return web.json_response({"replicas": [r.to_json() for r in self.gw.replicas.all()]})

    async def _add(self, request: web.Request) -> web.Response:
        url = await _json_url(request)
        self.gw.replicas.add(url, ReplicaState.LOADING)
        await self.gw.health.check(self.gw.replicas.get(url))
        return web.json_response(self.gw.replicas.get(url).to_json(), status=201)

    async def _remove(self, request: web.Request) -> web.Response:
        url = request.query.get("url") or await _json_url(request)
        if self.gw.replicas.get(url) is None:
            raise GatewayError(404, f"no replica {url!r}", param="url")
        self.gw.replicas.remove(url)
        return web.json_response({"removed": url})

    async def _rollout(self, request: web.Request) -> web.Response:
        spec = None
        if request.can_read_body:
            spec = await _json_object(request)
        return await self._run(request, lambda fleet: fleet.rollout(spec or None))

    async def _promote(self, request: web.Request) -> web.Response:
        return await self._run(request, lambda fleet: fleet.promote())

    async def _abort(self, request: web.Request) -> web.Response:
        return await self._run(request, lambda fleet: fleet.abort())

    async def _run(self, request: web.Request, operation) -> web.Response:
        fleet = self._fleet()
        if self._task and not self._task.done():
            raise GatewayError(
                409, "a rollout operation is already running", code="rollout_running"
            )
        self._task = asyncio.create_task(operation(fleet))
        if request.query.get("wait") in ("1", "true"):
            return web.json_response(await asyncio.shield(self._task))
        # Refusals that need no waiting (bad spec, nothing to promote) still come back at once.
        done, _ = await asyncio.wait({self._task}, timeout=0.05)
        if done:
            return web.json_response(self._task.result())
        return web.json_response({"status": "started"}, status=202)

    async def _autoscaler(self, _request: web.Request) -> web.Response:
        view = self._fleet().autoscaler()
        if view is None:
            raise GatewayError(404, "autoscaling is off: start with herd serve --autoscale")
        return web.json_response(view)

    async def _deny_list(self, _request: web.Request) -> web.Response:
        return web.json_response(self.gw.deny.to_json())

    async def _deny_add(self, request: web.Request) -> web.Response:
        kind, value = await _deny_entry(request)
        await self.gw.deny.add(kind, value)
        return web.json_response(self.gw.deny.to_json(), status=201)

    async def _deny_remove(self, request: web.Request) -> web.Response:
        kind, value = await _deny_entry(request)
        await self.gw.deny.remove(kind, value)
        return web.json_response(self.gw.deny.to_json())

    def _fleet(self) -> FleetControl:
        if self.gw.fleet is None:
            raise GatewayError(404, "no fleet: this gateway does not manage its replicas")
        return self.gw.fleet


async def _json_object(request: web.Request) -> dict:
    try:
        data = await request.json()
    except ValueError:
        raise GatewayError(400, "body must be a JSON object") from None
    if data is not None and not isinstance(data, dict):
        raise GatewayError(400, "body must be a JSON object")
    return data or {}


async def _deny_entry(request: web.Request) -> tuple[str, str]:
    """("key", id) or ("address", IP or network) from the query or a JSON body."""
    data = dict(request.query) if request.query else await _json_object(request)
    found = [(k, data[k]) for k in ("key", "address") if k in data]
    if len(found) != 1 or not isinstance(found[0][1], str) or not found[0][1]:
        raise GatewayError(400, "give exactly one of 'key' (an id) or 'address'", param="key")
    return found[0]


async def _json_url(request: web.Request) -> str:
    data = await _json_object(request)
    url = data.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise GatewayError(400, "'url' must be an http(s) URL", param="url")
    return url.rstrip("/")
