"""The aiohttp application of one replica: OpenAI routes over an engine client, plus /health,
/ready and /metrics. `create_app(engine, config)` builds it without starting anything."""

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from herd.engine.errors import InvalidRequestError
from herd.protocol import fleet_auth
from herd.protocol.errors import OpenAIError, error_middleware, log_refusal
from herd.protocol.openapi import build_openapi
from herd.protocol.requests import parse_body
from herd.protocol.responses import ModelCard, ModelList, dump
from herd.server.batches import mount_batches
from herd.server.config import ServerConfig
from herd.server.errors import APIError, bad_request
from herd.server.lifecycle import ADMISSION, STATE, Admission, ServerState
from herd.server.metrics import ServerMetrics
from herd.server.protocol import GenerateRequest, parse_chat, parse_completion
from herd.server.responses import Renderer, batch_usage
from herd.server.tool_parsers import get_parser
from herd.server.tool_prompt import render_chat
from herd.server.tracking import Tracker

log = logging.getLogger("herd.server")

ENGINE = web.AppKey("engine", Any)
CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", ServerMetrics)
OPENAPI = web.AppKey("openapi", dict)
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)  # the id the server gave a generate request


def served_name(config: ServerConfig) -> str:
    return config.served_model_name or os.path.basename(os.path.normpath(config.engine.model))


def refused(request: web.Request, err: OpenAIError) -> OpenAIError:
    """Log a refusal as one line and count it in herd_rejected_requests_total; returns `err`."""
    rid = request.headers.get(REQUEST_ID_HEADER) or request.get(REQUEST_ID, "-")
    return log_refusal(log, request.app[METRICS].rejected, request, err, rid)


def _engine_error(exc: Exception) -> OpenAIError | None:
    if isinstance(exc, InvalidRequestError):
        return bad_request(exc.message, exc.param)
    return None


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.headers.get(REQUEST_ID_HEADER)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid


async def _read_json(request: web.Request) -> Any:
    if (request.content_length or 0) > request.app[CONFIG].max_request_bytes:
        raise web.HTTPRequestEntityTooLarge(
            max_size=request.app[CONFIG].max_request_bytes, actual_size=request.content_length
        )
    try:
        async with asyncio.timeout(request.app[CONFIG].body_timeout):
            body = await request.read()  # read() raises 413 past client_max_size
    except TimeoutError:
        raise APIError(408, "request body not received in time", code="request_timeout") from None
    return parse_body(body)


def fleet_token_middleware(token: str):
    """Every route but /health and /ready requires the fleet's token (401 otherwise). The
    exact path is compared, so `//health` or `/health/../v1/models` need the token too."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        if request.path not in fleet_auth.OPEN_PATHS and not fleet_auth.accepts(
            token, request.headers
        ):
            raise APIError(401, "this replica serves its fleet's gateway only", code="unauthorized")
        return await handler(request)

    return middleware


def _prompt_ids(engine, req: GenerateRequest) -> list[int]:
    tok = engine.tokenizer
    if req.chat:
        return render_chat(tok, req.messages, req.tools)
    if isinstance(req.prompt, str):
        return list(tok.encode(req.prompt))
    return list(req.prompt)


def _fit_context(req: GenerateRequest, num_prompt: int, max_len: int) -> None:
    """Refuse what cannot fit the context, with the numbers; clamp a defaulted max_tokens."""
    what = "messages" if req.chat else "prompt"
    if num_prompt >= max_len:
        raise bad_request(
            f"This model's maximum context length is {max_len} tokens, and your {what} has "
            f"{num_prompt} tokens (at least one token must be left for the completion).",
            what,
        )
    room = max_len - num_prompt
    max_tokens = req.params.max_tokens
    if max_tokens is None or max_tokens <= room:
        return
    if not req.max_tokens_default:
        raise bad_request(
            f"This model's maximum context length is {max_len} tokens. However, you requested "
            f"{num_prompt + max_tokens} tokens ({num_prompt} in the {what}, {max_tokens} for the "
            "completion). Please reduce the length of the prompt or the completion.",
            "max_tokens",
        )
    min_tokens = min(req.params.min_tokens, room)
    req.params = dataclasses.replace(req.params, max_tokens=room, min_tokens=min_tokens)


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    app, t_arrival = request.app, time.monotonic()
    request_id = request[REQUEST_ID] = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    app[STATE].check_accepting()
    body = await _read_json(request)
    return await respond(app, body, chat, request_id, t_arrival, request)


async def respond(
    app: web.Application,
    body: Any,
    chat: bool,
    request_id: str,
    t_arrival: float,
    request: web.Request | None = None,
) -> Any:
    """Run one parsed request body: a JSON or SSE response to `request`, or, without one (the
    Batch API's lines), the answer as a dict (a streaming body is then a 400)."""
    config, engine = app[CONFIG], app[ENGINE]
    parse = parse_chat if chat else parse_completion
    req = parse(body, config.max_n, config.max_logprobs, config.max_tokens_default)
    if req.stream and request is None:
        raise bad_request("a batch request cannot stream", "stream")
    model = served_name(config)
    if req.model is not None and req.model != model:
        raise APIError(
            404, f"The model `{req.model}` does not exist.", param="model", code="model_not_found"
        )
    prompts: list = req.prompts if req.prompts and len(req.prompts) > 1 else [req.prompt]
    batch = len(prompts) > 1  # OpenAI's batch form of /v1/completions
    parts = []
    for i, prompt in enumerate(prompts):
        sub = dataclasses.replace(req, prompt=prompt, prompts=None) if batch else req
        ids = _prompt_ids(engine, sub)
        _fit_context(sub, len(ids), engine.max_model_len)
        renderer = _renderer(engine, sub, request_id, model, config.tool_call_parser)
        if batch:  # choice i*n + j is completion j of prompt i
            renderer.index_offset, renderer.in_batch = i * sub.params.n, True
        parts.append((sub, ids, renderer))
    if req.user:
        log.debug("request %s for user %r", request_id, req.user)
    renderers = [r for _, _, r in parts]
    admission, tickets = app[ADMISSION], []
    trackers = [Tracker(app[METRICS], t_arrival, sub.params.n) for sub, _, _ in parts]
    try:
        for _, ids, _ in parts:
            tickets.append(admission.admit(len(ids)))
        ids_of = [f"{request_id}-{i}" if batch else request_id for i in range(len(parts))]
        part_of = {rid: i for i, rid in enumerate(ids_of)}  # output.request_id -> its part
        streams = [
            engine.generate(rid, ids, s.params, s.priority)
            for rid, (s, ids, _) in zip(ids_of, parts, strict=True)
        ]
        # One prompt streams straight from the engine: no merging hop on the per-token path.
        outputs = _merge_streams(streams) if batch else streams[0]
        async with contextlib.aclosing(outputs):
            if req.stream:
                return await _stream(
                    request, outputs, part_of, renderers, trackers, admission, tickets
                )
            async for out in outputs:
                i = part_of[out.request_id]
                admission.started(tickets[i])
                trackers[i].observe(out)
                renderers[i].add(out)
    finally:
        for tracker in trackers:
            tracker.close()
        for ticket in tickets:
            admission.release(ticket)
    body = renderers[0].response()
    if batch:  # each choice carries its own prompt_token_ids; usage adds up
        body["choices"] = [c for r in renderers for c in r.response()["choices"]]
        body.pop("prompt_token_ids", None)
        body["usage"] = batch_usage(renderers)
    return web.json_response(body) if request is not None else body


def _renderer(engine, req: GenerateRequest, request_id: str, model: str, parser: str) -> Renderer:
    renderer = Renderer(req, request_id, model, engine.tokenizer, get_parser(parser))
    if req.echo and isinstance(req.prompt, str):
        renderer.prompt_text = req.prompt  # token ids: decoded once the engine accepts them
    return renderer


async def _merge_streams(streams: list) -> AsyncIterator[Any]:
    """Deltas from several engine streams as they come; closing it aborts them all. Nothing is
    yielded until every stream has been accepted by the engine (its first delta, or its end), so
    one refused prompt still refuses the whole batch before a streamed response starts."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for out in stream:
                    queue.put_nowait((i, out, None))
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer
            queue.put_nowait((i, None, exc))
        queue.put_nowait((i, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining, unheard, held = len(tasks), set(range(len(tasks))), []
        while remaining:
            i, out, exc = await queue.get()
            unheard.discard(i)
            if exc is not None:
                raise exc
            if out is None:
                remaining -= 1
            else:
                held.append(out)
            if unheard:
                continue
            for item in held:
                yield item
            held.clear()
        for item in held:
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stream(
    request,
    outputs,
    part_of: dict[str, int],
    renderers: list[Renderer],
    trackers,
    admission,
    tickets,
) -> web.StreamResponse:
    out = await anext(outputs)  # refusals (400) surface before the 200 goes out
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        while True:
            i = part_of[out.request_id]
            admission.started(tickets[i])
            trackers[i].observe(out)
            await resp.write(renderers[i].stream_chunk(out))
            try:
                out = await anext(outputs)
            except StopAsyncIteration:
                break
        await resp.write(renderers[0].stream_end(batch_usage(renderers)))
    except OpenAIError as err:
        await resp.write(refused(request, err).sse_event())
    except RuntimeError as exc:  # engine died mid-stream: tell the client, keep the framing
        log.exception("stream failed")
        err = APIError(500, f"generation failed: {exc}", code="internal_error")
        await resp.write(refused(request, err).sse_event())
    await resp.write_eof()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def models(request: web.Request) -> web.Response:
    config, engine = request.app[CONFIG], request.app[ENGINE]
    card = ModelCard(
        id=served_name(config),
        object="model",
        created=int(time.time()),
        owned_by="herd",
        root=str(config.engine.model),
        max_model_len=engine.max_model_len or None,
        **engine.precision,
    )
    return web.json_response(dump(ModelList(object="list", data=[card])))


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if engine.dead is not None:
        return APIError(500, f"engine step loop failed: {engine.dead!r}").response()
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    state, engine = request.app[STATE], request.app[ENGINE]
    if state.phase == "ready" and engine.dead is None:
        return web.json_response({"status": "ready", "startup": state.phases})
    return web.json_response({"status": state.phase}, status=503, headers={"Retry-After": "1"})


async def openapi(request: web.Request) -> web.Response:
    cache, max_len = request.app[OPENAPI], request.app[ENGINE].max_model_len or None
    doc = cache.get(max_len)
    if doc is None:  # before the engine loads its context length is unknown: not narrowed
        name = served_name(request.app[CONFIG])
        doc = cache[max_len] = build_openapi("herd replica", [name], max_len)
    return web.json_response(doc)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def create_app(engine, config: ServerConfig) -> web.Application:
    """The replica's application over `engine` (an `AsyncEngine` or anything with its interface:
    generate, abort_all, tokenizer, max_model_len, stats, baseline, dead, phases)."""
    errors = error_middleware(
        refused, config.max_request_bytes, "internal server error", log, _engine_error
    )
    token = fleet_auth.read_token(config.fleet_token_file)
    middlewares = [errors] + ([fleet_token_middleware(token)] if token else [])
    app = web.Application(middlewares=middlewares, client_max_size=config.max_request_bytes)
    app[ENGINE] = engine
    app[CONFIG] = config
    app[STATE] = ServerState()
    app[ADMISSION] = Admission(config.max_queued_requests, config.max_queued_tokens)
    app[METRICS] = ServerMetrics(lambda: (engine.stats, engine.baseline), lambda: engine.precision)
    app[OPENAPI] = {}  # context length -> document, built on request (known once loaded)
    app.on_response_prepare.append(_echo_request_id)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    mount_batches(app, config, respond)
    return app
