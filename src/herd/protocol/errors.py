"""OpenAI's error wire format, shared by the replica server and the gateway:
`{"error": {"message", "type", "param", "code"}}` with its HTTP status, as a JSON response or as
one SSE event inside a stream that has already begun. Imports nothing else of herd."""

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from herd.protocol.sse import encode_json

# HTTP status -> OpenAI error `type` (the names OpenAI's own API and client use).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIError(Exception):
    """A refusal with its HTTP status and OpenAI error body; `headers` carry Retry-After or
    x-ratelimit-*."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)

    def sse_event(self) -> bytes:
        """The error as one SSE event, for a stream whose 200 status line has already gone out."""
        return encode_json(self.body())


Refuse = Callable[[web.Request, OpenAIError], OpenAIError]


def log_refusal(
    logger: logging.Logger, counter: Any, request: web.Request, err: OpenAIError, request_id: str
) -> OpenAIError:
    """One log line per refusal (never a key or a body) and one count in
    `herd_rejected_requests_total{status,reason}` (reason: the error's code, else its type: a
    bounded set); returns `err`."""
    reason = err.code or ERROR_TYPES.get(err.status, "error")
    counter.labels(str(err.status), reason).inc()
    logger.log(
        logging.WARNING if err.status >= 500 else logging.INFO,
        "refused %d %s %s param=%s request_id=%s: %s",
        err.status,
        request.method,
        request.path,
        err.param,
        request_id,
        err.message,
    )
    return err


def error_middleware(
    refuse: Refuse,
    max_body_bytes: int,
    internal_message: str,
    logger: logging.Logger,
    convert: Callable[[Exception], OpenAIError | None] | None = None,
):
    """An aiohttp middleware under which every failure leaves as an OpenAI error body, passed
    through `refuse` (log and count): the app's own OpenAIErrors, aiohttp's 404 / 405 (Allow
    kept) / 413, whatever `convert` recognises, and any other exception as a 500 that names
    nothing of it."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OpenAIError as err:
            return refuse(request, err).response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return refuse(request, _framework_error(request, exc, max_body_bytes)).response()
        except Exception as exc:
            err = convert(exc) if convert else None
            if err is None:
                logger.exception("unhandled error on %s %s", request.method, request.path)
                err = OpenAIError(500, internal_message, code="internal_error")
            return refuse(request, err).response()

    return middleware


def _framework_error(request: web.Request, exc: web.HTTPException, max_body: int) -> OpenAIError:
    message, code = {
        404: (f"no route {request.method} {request.path}", "not_found"),
        405: (f"method {request.method} not allowed on {request.path}", "method_not_allowed"),
        413: (f"request body exceeds the limit of {max_body} bytes", "request_too_large"),
    }.get(exc.status, (exc.reason, None))
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return OpenAIError(exc.status, message, code=code, headers=allow)
