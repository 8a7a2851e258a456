"""The replica's Batch API: `herd.batch`'s routes over a store in `--batch-dir`, whose runner
sends each line through the replica's own request path (`respond`) at `BATCH_PRIORITY`, so batch
lines fill idle capacity and any interactive request outranks (and preempts) them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from herd.batch.objects import BATCH_PRIORITY
from herd.batch.routes import BatchRoutes, mount_off
from herd.batch.runner import BatchRunner
from herd.batch.store import BatchStore
from herd.engine.errors import InvalidRequestError
from herd.protocol.errors import OpenAIError
from herd.server.config import ServerConfig
from herd.server.errors import bad_request
from herd.server.lifecycle import STATE

RUNNER = web.AppKey("batch_runner", BatchRunner)

Respond = Callable[..., Awaitable[Any]]  # herd.server.app.respond (passed in: no import cycle)


def mount_batches(app: web.Application, config: ServerConfig, respond: Respond) -> None:
    """Add /v1/files and /v1/batches to the replica's app (404s naming the flag when off)."""
    if config.batch_dir is None:
        mount_off(app, "start the replica with --batch-dir DIR")
        return
    store = BatchStore(config.batch_dir)

    async def send(batch: dict, body: dict, request_id: str) -> tuple[int, Any]:
        chat = batch["endpoint"] == "/v1/chat/completions"
        line = {**body, "priority": BATCH_PRIORITY}
        answer_id = request_id.replace("req_", "chatcmpl-" if chat else "cmpl-", 1)
        try:
            app[STATE].check_accepting()  # starting or draining: 503, the runner retries later
            return 200, await respond(app, line, chat, answer_id, time.monotonic())
        except InvalidRequestError as exc:
            return 400, bad_request(exc.message, exc.param).body()
        except OpenAIError as err:
            return err.status, err.body()

    runner = app[RUNNER] = BatchRunner(store, send, config.batch_concurrency)
    routes = BatchRoutes(
        store, runner, lambda _request: ("", "replica"), config.max_batch_file_bytes,
        config.body_timeout,
    )  # fmt: skip
    routes.add_routes(app)

    async def start(_app: web.Application) -> None:
        runner.start()

    async def stop(_app: web.Application) -> None:
        await runner.stop()
        store.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app[STATE].on_drain.append(runner.stop)
