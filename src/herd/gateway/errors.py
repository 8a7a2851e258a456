"""OpenAI-style error bodies and the exception that carries one out of any gateway layer.

Every refusal the gateway makes goes through `GatewayError` so the status, the body shape
and headers such as Retry-After are set in one place."""

from __future__ import annotations

import json

from aiohttp import web

# HTTP status -> OpenAI error type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


class GatewayError(Exception):
    """A refusal with its HTTP status; `headers` carry Retry-After or x-ratelimit-*."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            error_body(self.status, self.message, self.param, self.code),
            status=self.status,
            headers=self.headers,
        )

    def sse_event(self) -> bytes:
        """The error as one SSE event, for streams that had already begun."""
        body = error_body(self.status, self.message, self.param, self.code)
        return b"data: " + json.dumps(body).encode() + b"\n\n"
