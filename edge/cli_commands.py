"""The subcommands. Each room registers its own with a `register_*` function; heavy imports
happen inside the handlers, never at module import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.cli import Handler

Sub = Any  # argparse's _SubParsersAction is private
Register = Callable[[Sub, dict[str, Handler]], None]


REGISTRY: list[Register] = []

from edge.scheduler.cli import register_simulate_day  # noqa: E402

REGISTRY.append(register_simulate_day)
