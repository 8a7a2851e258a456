"""Transport security for every herd HTTP endpoint: the `ssl.SSLContext`s that the gateway and
replicas listen with (optionally requiring client certificates: mutual TLS) and that the
gateway's client uses to trust replicas. Bad or missing files are a `TLSConfigError` naming the
file, never a traceback from deep inside `ssl`."""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def _check_file(path: str, what: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise TLSConfigError(f"{what} file not found: {path}")
    try:
        p.open("rb").close()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None


def server_context(cert: str, key: str | None, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context for `cert` (PEM chain) and `key`; with `client_ca`, clients
    must present a certificate signed by it (mutual TLS)."""
    if not key:
        raise TLSConfigError("--tls-cert needs --tls-key (the certificate's private key)")
    _check_file(cert, "TLS certificate")
    _check_file(key, "TLS key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"TLS certificate {cert} and key {key} do not load ({exc.reason or exc}): "
            "PEM files, the key matching the certificate?"
        ) from None
    if client_ca:
        _load_ca(ctx, client_ca, "TLS client CA")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A verifying client context: the system's trust store, plus `ca` when given (a private
    CA for replicas behind a gateway)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca:
        _load_ca(ctx, ca, "TLS CA")
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca: str, what: str) -> None:
    _check_file(ca, what)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{what} file {ca} does not load ({exc.reason or exc})") from None


def maybe_server_context(
    cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    """`server_context` when a certificate is configured; None (plain HTTP) otherwise. A key or
    client CA without a certificate is an error rather than a silent plain-HTTP endpoint."""
    if cert:
        return server_context(cert, key, client_ca)
    if key or client_ca:
        raise TLSConfigError("--tls-key and --tls-client-ca need --tls-cert")
    return None
