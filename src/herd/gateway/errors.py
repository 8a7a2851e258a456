"""The exception that carries a refusal out of any gateway layer.

Every refusal the gateway makes goes through `GatewayError` so the status, the body shape
(`herd.protocol.errors`) and headers such as Retry-After are set in one place."""

from herd.protocol.errors import OpenAIError


class GatewayError(OpenAIError):
    """A refusal with its HTTP status; `headers` carry Retry-After or x-ratelimit-*."""
