"""Command-line flags derived from config dataclasses: each field declared with
`herd.engine.config.setting` becomes `--field-name` with its type, default, help and choices.
Nothing here names a setting, so a field added to a config is a flag with no other edit."""

import argparse
import json
import types
import typing
from dataclasses import MISSING, Field
from typing import Any


def add_config_args(
    parser: argparse.ArgumentParser,
    config_fields: list[Field],
    *,
    skip: tuple[str, ...] = (),
    pass_through: bool = False,
) -> None:
    """One flag per field. With `pass_through` a flag has no default and is absent from the
    parsed namespace unless given (for commands that hand settings on to replicas)."""
    for f in config_fields:
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _scalar_type(f.type)
        default = None if f.default is MISSING else f.default
        text = f.metadata.get("help", "")
        if default is not None and f.default is not MISSING:
            text += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "help": text}
        if pass_through:
            kw["default"] = argparse.SUPPRESS
        elif f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if kind is dict:  # a dict-valued setting is given as JSON text
            kind = json.loads
        choices = f.metadata.get("choices")
        if choices:
            kw["choices"] = choices
        parser.add_argument(flag, type=kind, **kw)


def config_values(args: argparse.Namespace, config_fields: list[Field]) -> dict[str, Any]:
    """The parsed values of these fields (pass-through flags: only those given)."""
    return {f.name: getattr(args, f.name) for f in config_fields if hasattr(args, f.name)}


def as_flags(values: dict[str, Any]) -> list[str]:
    """Settings back to flags, to hand on to a child command (`herd replica`)."""
    out = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        elif value is not None:
            out += [flag, str(value)]
    return out


def _scalar_type(annotation: Any) -> type:
    """`T` of a field annotated `T` or `T | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if not isinstance(annotation, type):
        raise TypeError(f"config field type {annotation!r} must be a type, not a string")
    return annotation
