"""API keys: who is calling, which tenant they belong to, what they may use.

The keys file holds only SHA-256 hashes of keys, so leaking it leaks no key. The admin key is
separate; admin routes accept it alone, never a tenant key."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from herd.gateway.config import ConfigError, read_file
from herd.gateway.errors import GatewayError


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One API key's identity and limits: its id (used in logs and metrics; never the secret),
    tenant (the unit caches are isolated by), allowed models, requests/tokens per minute and
    concurrency caps (0: unlimited), its QoS class and its daily / monthly token budgets."""

    id: str  # names the key in logs and metrics (never the key itself)
    tenant: str  # isolation unit: caches are never shared across tenants
    models: tuple[str, ...] = ("*",)  # allowed model names; "*" allows any
    rpm: int = 0  # requests per minute; 0: unlimited
    tpm: int = 0  # tokens (prompt + completion) per minute; 0: unlimited
    concurrency: int = 0  # requests at once; 0: unlimited
    qos_class: str = ""  # its QoS class (herd.gateway.qos); "": the default class
    tokens_per_day: int = 0  # token budget per UTC day (herd.gateway.budgets); 0: none
    tokens_per_month: int = 0  # token budget per calendar month (UTC); 0: none

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.concurrency)


ANONYMOUS = ApiKey(id="anonymous", tenant="default")


def _bearer(headers) -> str | None:
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("api-key") or headers.get("x-api-key") or None


def load_keys(path: str | Path) -> dict[str, ApiKey]:
    """{sha256 hex: ApiKey} from a YAML/TOML/JSON file with a `keys` list."""
    data = read_file(path)
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a top-level `keys` list")
    keys: dict[str, ApiKey] = {}
    for n, entry in enumerate(entries):
        where = f"{path}: keys[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ConfigError(
                f"{where}: needs `sha256` (hex SHA-256 of the key; plain keys are refused)"
            )
        digest = entry["sha256"].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where}: `sha256` must be 64 hex digits")
        models = entry.get("models", ["*"])
        if isinstance(models, str):
            models = [models]
        try:
            key = ApiKey(
                id=str(entry.get("id") or digest[:8]),
                tenant=str(entry.get("tenant") or entry.get("id") or digest[:8]),
                models=tuple(str(m) for m in models),
                rpm=int(entry.get("rpm", 0)),
                tpm=int(entry.get("tpm", 0)),
                concurrency=int(entry.get("concurrency", 0)),
                qos_class=str(entry.get("class") or ""),
                tokens_per_day=int(entry.get("tokens_per_day", 0)),
                tokens_per_month=int(entry.get("tokens_per_month", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if digest in keys:
            raise ConfigError(f"{where}: duplicate key hash")
        keys[digest] = key
    return keys


class Authenticator:
    """Checks each request's bearer key against the keys file (stored and looked up as SHA-256
    hashes, never in the clear), authorizes the requested model, and guards /admin routes with
    the admin key (compared in constant time). Without a keys file every caller is the anonymous
    key."""

    def __init__(self, keys: dict[str, ApiKey] | None, admin_key: str | None):
        self.keys = keys  # None: authentication off, everyone is ANONYMOUS
        # The admin key may be given plain or as "sha256:<hex>".
        if admin_key and admin_key.startswith("sha256:"):
            self._admin_hash = admin_key[7:].lower()
        else:
            self._admin_hash = hash_key(admin_key) if admin_key else None

    @property
    def admin_id(self) -> str:
        """Names the admin key in the audit log (never the key itself)."""
        return f"admin:{(self._admin_hash or '')[:8]}"

    def authenticate(self, headers) -> ApiKey:
        if self.keys is None:
            return ANONYMOUS
        key = _bearer(headers)
        if key is None:
            raise GatewayError(
                401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        found = self.keys.get(hash_key(key))
        if found is None:
            raise GatewayError(401, "invalid API key", code="invalid_api_key")
        return found

    def authorize_model(self, key: ApiKey, model: str) -> None:
        if not key.allows(model):
            raise GatewayError(
                403,
                f"this key may not use model {model!r}",
                param="model",
                code="model_not_allowed",
            )

    def check_admin(self, headers) -> None:
        if self._admin_hash is None:
            raise GatewayError(
                403,
                "the admin API is off: start the gateway with --admin-key",
                code="admin_disabled",
            )
        key = _bearer(headers)
        if key is None:
            raise GatewayError(401, "missing admin key", code="missing_api_key")
        if not hmac.compare_digest(hash_key(key), self._admin_hash):
            raise GatewayError(403, "not the admin key", code="not_admin")
