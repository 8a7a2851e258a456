"""herd: serve, benchmark and size Llama-family model deployments.

The `herd` command. Each subcommand lives in its own module with a `register(subparsers)`
function; heavy imports happen inside the handlers so `herd --help` stays fast."""

import argparse
import importlib
import sys

# Modules that add subcommands; each defines register(subparsers).
COMMAND_MODULES = [
    "herd.cli.engine_cmds",
    "herd.cli.server_cmds",
    "herd.cli.gateway_cmds",
    "herd.cli.bench_cmds",
    "herd.cli.plan_cmds",
    "herd.cli.autoscale_cmds",
    "herd.cli.top_cmds",
    "herd.cli.audit_cmds",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # subcommand not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"herd {args.command}: error: {exc}", file=sys.stderr)
        return 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""
