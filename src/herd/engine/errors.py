"""Exceptions the engine raises for bad requests; the server maps them to OpenAI error bodies.
(Bad engine settings are plain `ValueError`s; `ModelLoadError` lives in `herd.model.errors`.)"""

from herd.model.errors import ModelLoadError

__all__ = ["InvalidRequestError", "ModelLoadError"]


class InvalidRequestError(ValueError):
    """A request the engine refuses (HTTP 400). `param` names the offending field, if any."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
