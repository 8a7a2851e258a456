"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}` with the HTTP
status that goes with them. Handlers raise `APIError`; the app's middleware renders it."""

import json

from aiohttp import web

# HTTP status -> OpenAI error `type` (the names OpenAI's own API and client use).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """A request the server answers with an error status and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds; sent as Retry-After (429 / 503)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None):
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(err: APIError) -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return web.json_response(
        error_body(err.status, err.message, err.param, err.code),
        status=err.status,
        headers=headers,
    )


def sse_error(err: APIError) -> bytes:
    """An error inside an already started stream (the status line has gone out as 200)."""
    body = error_body(err.status, err.message, err.param, err.code)
    return f"data: {json.dumps(body)}\n\n".encode()
