"""What every request model of herd.protocol is built from: strict JSON typing (`Strict`) and
`ParamError`, the refusal a validator raises naming the field. Imports nothing else of herd."""

from typing import Any

from pydantic import BaseModel, ConfigDict


class ParamError(ValueError):
    """A refusal raised inside validation: `param` names the field, `code` is OpenAI's error code
    (`invalid_value`, `unsupported_parameter`, ...)."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class Strict(BaseModel):
    """JSON types as they are (no "3" for 3, no true for 1), finite numbers, unknown fields
    refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def unsupported(name: str, value: Any, allowed: tuple = (None,)) -> Any:
    """`value` if it is one of `allowed` (same type too: 0 is not false), else a ParamError."""
    if not any(value == a and type(value) is type(a) for a in allowed):
        shown = ", ".join("null" if a is None else repr(a) for a in allowed)
        raise ParamError(
            f"'{name}' is not supported by herd (accepted: {shown})", name, "unsupported_parameter"
        )
    return value
