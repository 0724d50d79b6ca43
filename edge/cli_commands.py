"""The subcommands. Each room registers its own with a `register_*` function; heavy imports
happen inside the handlers, never at module import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.cli import Handler

Sub = Any  # argparse's _SubParsersAction is private
Register = Callable[[Sub, dict[str, Handler]], None]


REGISTRY: list[Register] = []


def register_ctl(sub: Sub, handlers: dict[str, Handler]) -> None:
    from edge.ctl import register

    register(sub, handlers)


REGISTRY.append(register_ctl)
