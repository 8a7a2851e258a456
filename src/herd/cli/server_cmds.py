"""`herd replica`: run one replica (the engine behind the OpenAI API) until SIGTERM.

Flags mirror `vllm serve`; their help text is the comments of `herd.server.config.ServerConfig`."""

import argparse
import dataclasses
import types
import typing

from herd.cli import CliError


def _arg_type(annotation) -> type:
    """The scalar type of a field annotated `T` or `T | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def register(subparsers) -> None:
    from herd.server.config import ServerConfig, field_help

    p = subparsers.add_parser(
        "replica",
        help="run one replica: the OpenAI API over the engine",
    )
    helps = field_help(ServerConfig)
    hints = typing.get_type_hints(ServerConfig)
    for f in dataclasses.fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _arg_type(hints[f.name])
        text = helps.get(f.name, "")
        if f.default not in (None, dataclasses.MISSING) and "default" not in text:
            text += f" (default: {f.default})"
        if kind is bool:
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=helps.get(f.name),
            )
        elif f.default is dataclasses.MISSING:
            p.add_argument(flag, type=kind, required=True, help=text)
        else:
            p.add_argument(flag, type=kind, default=f.default, help=text)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from herd.server.config import ServerConfig

    names = [f.name for f in dataclasses.fields(ServerConfig)]
    try:
        config = ServerConfig(**{name: getattr(args, name) for name in names})
    except ValueError as exc:
        raise CliError(str(exc)) from None
    from herd.server.main import run_replica

    return run_replica(config)
