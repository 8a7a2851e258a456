"""The server's refusals: handlers raise `APIError`; the app's middleware renders it in
OpenAI's error format (`herd.protocol.errors`)."""

from herd.protocol.errors import OpenAIError


class APIError(OpenAIError):
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
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        super().__init__(status, message, param=param, code=code, headers=headers)
        self.retry_after = retry_after  # seconds; sent as Retry-After (429 / 503)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)
