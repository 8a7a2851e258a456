"""`herd audit verify FILE...`: check an audit log's hash chain (files oldest first, rotated ones
before the current one); exit 1 naming each line that does not follow the one before it."""

from __future__ import annotations

import argparse

from herd.cli import CliError


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="check the gateway's hash-chained audit log")
    sub = p.add_subparsers(dest="audit_command", required=True)
    v = sub.add_parser("verify", help="detect edited or removed lines in audit files")
    v.add_argument(
        "files", nargs="+", help="audit files, oldest first (rotated ones, then current)"
    )
    v.set_defaults(func=handle_verify)


def handle_verify(args: argparse.Namespace) -> int:
    from herd.gateway.audit import verify

    try:
        problems = verify(args.files)
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename}: {exc.strerror}") from None
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"ok: the chain through {len(args.files)} file(s) is intact")
    return 0
