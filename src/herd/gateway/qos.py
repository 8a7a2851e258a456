"""QoS classes, owned by the operator: each API key's class sets the priority range its requests
may ask for, a `max_tokens` default and ceiling, and its share of the gateway's wait queue.

Classes are declared in the keys file's `classes:` table (ranked by their priority range: the
lowest values are served first, as in the engine) with `default_class:` naming the class of keys without one and of anonymous traffic. A request's
body is rewritten only when its priority or max_tokens must change."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.gateway.config import ConfigError, read_file
from herd.gateway.errors import GatewayError
from herd.gateway.request_info import RequestInfo

BUILTIN = "standard"  # the only class when a keys file declares none
COMPLETIONS_DEFAULT = 16  # OpenAI's max_tokens for /v1/completions when a request gives none


@dataclass(frozen=True)
class QosClass:
    """One class of service: the priorities its requests may ask for (lower runs first, vLLM's
    convention; a client's value is clamped into the range), the max_tokens forwarded when a
    request gives none and the most it may ask for (None: no ceiling), its share of the gateway
    queue (1.0: all of it), and its rank (0 is served first)."""

    name: str
    priority: tuple[int, int] = (0, 0)  # (lowest, highest) value a request may ask for
    max_tokens: int | None = None  # ceiling; a request above it gets 400
    max_tokens_default: int | None = None  # forwarded when a request gives none
    queue_share: float = 1.0  # most of the gateway queue this class's waiters may hold
    max_prompt_chars: int | None = None  # content policy: longer prompts are refused (403)
    rank: int = 0  # by priority range (then listed order): lower is served first

    def clamp(self, priority: int) -> int:
        lo, hi = self.priority
        return min(max(priority, lo), hi)


class QosClasses:
    """The class table: looks up a key's class (its own, else the default class). Promises a
    class for every key, and that the default class exists."""

    def __init__(self, classes: dict[str, QosClass], default: str):
        self.classes = classes
        self.default = classes[default]

    @classmethod
    def builtin(cls) -> QosClasses:
        return cls({BUILTIN: QosClass(BUILTIN)}, BUILTIN)

    def of(self, name: str | None) -> QosClass:
        return self.classes.get(name or "", self.default)

    def shares(self) -> dict[str, float]:
        return {c.name: c.queue_share for c in self.classes.values()}


def load_classes(path: str | Path) -> QosClasses:
    """The `classes:` and `default_class:` of a keys file (the built-in table without them)."""
    data = read_file(path)
    table = data.get("classes") if isinstance(data, dict) else None
    if table is None:
        for n, entry in enumerate(data.get("keys") or [] if isinstance(data, dict) else []):
            if isinstance(entry, dict) and entry.get("class") not in (None, BUILTIN):
                raise ConfigError(f"{path}: keys[{n}]: class {entry['class']!r} needs `classes`")
        return QosClasses.builtin()
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path}: `classes` must be a table of class name -> settings")
    parsed = [
        _parse_class(str(name), spec, f"{path}: classes.{name}") for name, spec in table.items()
    ]
    ranked = sorted(parsed, key=lambda c: c.priority)  # stable: ties keep the listed order
    classes = {c.name: dataclasses.replace(c, rank=rank) for rank, c in enumerate(ranked)}
    default = str(data.get("default_class") or next(iter(classes)))
    if default not in classes:
        raise ConfigError(f"{path}: default_class {default!r} is not in `classes`")
    for n, entry in enumerate(data.get("keys") or []):
        named = entry.get("class") if isinstance(entry, dict) else None
        if named is not None and str(named) not in classes:
            raise ConfigError(f"{path}: keys[{n}]: class {named!r} is not in `classes`")
    return QosClasses(classes, default)


def _parse_class(name: str, spec: Any, where: str) -> QosClass:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table")
    fields = {f.name for f in dataclasses.fields(QosClass)} - {"name", "rank"}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    try:
        pr = spec.get("priority", [0, 0])
        pr = (int(pr), int(pr)) if isinstance(pr, int) else (int(pr[0]), int(pr[1]))
        cls = QosClass(
            name=name,
            priority=pr,
            max_tokens=_opt_int(spec.get("max_tokens")),
            max_tokens_default=_opt_int(spec.get("max_tokens_default")),
            queue_share=float(spec.get("queue_share", 1.0)),
            max_prompt_chars=_opt_int(spec.get("max_prompt_chars")),
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if pr[0] > pr[1]:
        raise ConfigError(f"{where}: priority range [{pr[0]}, {pr[1]}] is empty")
    if not 0 < cls.queue_share <= 1:
        raise ConfigError(f"{where}: queue_share must be in (0, 1]")
    ceiling, default = cls.max_tokens, cls.max_tokens_default
    if ceiling is not None and default is not None and default > ceiling:
        raise ConfigError(f"{where}: max_tokens_default {default} is above max_tokens {ceiling}")
    return cls


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return int(value)


LONG_LANE = 1_000_000  # added to a long prompt's rank: behind every short prompt of any class


def apply_class(
    info: RequestInfo,
    cls: QosClass,
    server_default: int | None,
    long_prompt_chars: int | None = None,
) -> None:
    """Clamp the request's priority to its class, resolve max_tokens (the request's, else the
    class default, else the gateway's `--max-tokens-default`, else the class ceiling) and refuse
    one above the ceiling with 400, as OpenAI does for a too-large max_tokens. The forwarded
    body is re-encoded only when a value changed; `info.route` carries the class for the queue.
    A prompt longer than `long_prompt_chars` waits in the long lane: behind every shorter
    prompt, so a 30k-token prompt never sits in front of a chat turn (its class still orders it
    among long ones)."""
    changes: dict[str, Any] = {}
    asked = info.payload.get("priority")
    if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int)):
        raise GatewayError(400, "'priority' must be an integer", param="priority")
    base = 0 if asked is None else asked  # the engine's default when absent
    if cls.clamp(base) != base:
        changes["priority"] = cls.clamp(base)
    ceiling = cls.max_tokens
    if info.max_tokens is not None and ceiling is not None and info.max_tokens > ceiling:
        param = "max_completion_tokens" if "max_completion_tokens" in info.payload else "max_tokens"
        raise GatewayError(
            400,
            f"{param} is too large: {info.max_tokens}. The {cls.name!r} class allows at most "
            f"{ceiling} completion tokens.",
            param=param,
            code="max_tokens_too_large",
        )
    if info.max_tokens is None:
        filled = cls.max_tokens_default or server_default
        if filled is None and ceiling is not None:
            # Chat runs to the context without max_tokens; completions stop at OpenAI's 16.
            unbounded = info.endpoint == "chat/completions" or ceiling < COMPLETIONS_DEFAULT
            filled = ceiling if unbounded else None
        if filled is not None:
            filled = min(filled, ceiling) if ceiling is not None else filled
            changes["max_tokens"] = info.max_tokens = filled
    if changes:
        info.payload.update(changes)
        info.body = json.dumps(info.payload).encode()
    long = long_prompt_chars is not None and len(info.prompt_text) > long_prompt_chars
    rank = cls.rank + (LONG_LANE if long else 0)
    info.route = dataclasses.replace(info.route, qos_class=cls.name, rank=rank)
