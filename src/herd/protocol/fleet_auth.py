"""The fleet's internal token: how a replica knows a request comes from its own gateway. The
gateway sends it in one header on every request (completions, probes, scrapes); a replica
started with a token refuses anything else except /health and /ready. The replica reads it from
the environment or a file, never from its command line (visible to every user in `ps`)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

HEADER = "x-herd-fleet-token"
ENV_VAR = "HERD_FLEET_TOKEN"
OPEN_PATHS = frozenset({"/health", "/ready"})  # liveness and readiness stay open to probes


class FleetTokenError(ValueError):
    """The token file cannot be read or is empty; the message names the file."""


def read_token(token_file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token from `token_file` (first line, stripped), else from $HERD_FLEET_TOKEN, else
    None (no token required)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise FleetTokenError(
                f"cannot read fleet token file {token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise FleetTokenError(f"fleet token file {token_file} is empty")
        return token
    return environ.get(ENV_VAR) or None


def accepts(expected: str, headers: Mapping[str, str]) -> bool:
    """Whether the request's header carries `expected`, compared in constant time."""
    given = headers.get(HEADER, "")
    return hmac.compare_digest(given.encode(), expected.encode())
