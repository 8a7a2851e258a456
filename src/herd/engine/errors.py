"""Exceptions the engine raises for bad input; the server maps them to OpenAI error bodies."""


class InvalidRequestError(ValueError):
    """A request the engine refuses (HTTP 400). `param` names the offending field, if any."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ModelLoadError(RuntimeError):
    """A model directory that cannot be loaded: missing files, malformed config, bad weights."""
