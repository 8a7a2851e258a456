"""OpenAI's error wire format, shared by the replica server and the gateway:
`{"error": {"message", "type", "param", "code"}}` with its HTTP status, as a JSON response or as
one SSE event inside a stream that has already begun. Imports nothing else of herd."""

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
