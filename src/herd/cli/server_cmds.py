"""`herd replica`: run one replica (the engine behind the OpenAI API) until SIGTERM.

Flags mirror `vllm serve`; they are derived from `EngineConfig` (engine settings) and
`ServerConfig` (the server's own), names, defaults, help and choices included."""

import argparse
import dataclasses
from pathlib import Path

from herd.cli import CliError


def _server_fields() -> list[dataclasses.Field]:
    from herd.server.config import ServerConfig

    return [f for f in dataclasses.fields(ServerConfig) if f.name != "engine"]


def register(subparsers) -> None:
    from herd.cli.config_args import add_config_args
    from herd.engine.config import flat_fields

    p = subparsers.add_parser("replica", help="run one replica: the OpenAI API over the engine")
    add_config_args(p.add_argument_group("engine"), flat_fields())
    add_config_args(p.add_argument_group("server"), _server_fields())
    p.set_defaults(func=handle)


def check_model_path(model: str) -> None:
    """A model directory or a .gguf file; anything else is refused before the engine starts."""
    path = Path(model)
    if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return
    raise CliError(f"--model {model!r} is not a model directory or a .gguf file")


def engine_config(args: argparse.Namespace, **override):
    """The `EngineConfig` of parsed engine flags; a bad value is a `CliError` naming it."""
    from herd.cli.config_args import config_values
    from herd.engine.config import EngineConfig, flat_fields

    try:
        return EngineConfig.from_flat(**{**config_values(args, flat_fields()), **override})
    except ValueError as exc:
        raise CliError(str(exc)) from None


def handle(args: argparse.Namespace) -> int:
    from herd.engine.process_tuning import maybe_reexec

    maybe_reexec()  # once, before torch loads: preloads tcmalloc / Intel OpenMP when present
    from herd.cli.config_args import config_values
    from herd.server.config import ServerConfig

    engine = engine_config(args)
    try:
        config = ServerConfig(engine, **config_values(args, _server_fields()))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    check_model_path(engine.model)
    from herd.protocol.fleet_auth import read_token
    from herd.protocol.tls import maybe_server_context
    from herd.server.main import run_replica

    try:  # refused here, before the engine loads
        maybe_server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
        read_token(config.fleet_token_file)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    from herd.batch.store import BatchDirBusy

    try:
        return run_replica(config)
    except BatchDirBusy as exc:  # another process runs this --batch-dir's batches
        raise CliError(str(exc)) from None
    except OSError as exc:  # port in use, address not available
        raise CliError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
