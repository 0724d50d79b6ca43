"""`swapd` command line. Logs go to stderr; stdout carries only a command's result.

Exit codes: 0 success, 2 bad input (config, scenario, arguments), 1 runtime failure.
Each subcommand imports its room lazily so `swapd run` loads only what the daemon needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge.cli.base import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, Handler

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_RUNTIME", "Handler", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"swapd: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    p = _Parser(prog="swapd", description="Edge daemon for battery-swap stations")
    p.add_argument(
        "--version",
        action="store_true",
        help="print the version and the commit it was built from, and exit",
    )
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    handlers: dict[str, Handler] = {}

    from edge.cli.commands import REGISTRY

    for register in REGISTRY:
        register(sub, handlers)
    return p, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from edge.version import version_line

        print(version_line())
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return EXIT_RUNTIME
