"""The subcommands. Each room registers its own with a `register_*` function; heavy imports
happen inside the handlers, never at module import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.cli import Handler

Sub = Any  # argparse's _SubParsersAction is private
Register = Callable[[Sub, dict[str, Handler]], None]


def register_asyncapi(sub: Sub, handlers: dict[str, Handler]) -> None:
    from edge.telemetry.cli import register_asyncapi as register

    register(sub, handlers)


REGISTRY: list[Register] = [register_asyncapi]
