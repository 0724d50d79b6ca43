"""The subcommands. Each room registers its own with a `register_*` function; heavy imports
happen inside the handlers, never at module import."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from edge.cli.base import Handler

Sub = Any  # argparse's _SubParsersAction is private
Register = Callable[[Sub, dict[str, Handler]], None]


def register_check_config(sub: Sub, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a station config (and its scenarios) or scenario files; exit 2 on problems",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="station config, or a scenario file; a config's scenarios/*.yaml are checked too",
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="S",
        help="also check this scenario (path or builtin:NAME); repeatable",
    )

    def run(args: argparse.Namespace) -> int:
        from edge.cli.check_config import check_config

        if not args.paths and not args.scenario:
            p.error("name a station config or a scenario")
        return check_config(args.paths, args.scenario)

    handlers["check-config"] = run


def register_run(sub: Sub, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser("run", help="run the station daemon")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--sim-speed",
        type=float,
        default=None,
        metavar="X",
        help="simulated world only (two-process bench): the scheduler's time (tariff, "
        "forecast, reserve) runs X times faster, as `swapd sim --speed X`; protocol timers "
        "stay real",
    )

    def run(args: argparse.Namespace) -> int:
        import sys

        # structlog pulls in rich (and pygments) when installed, for pretty tracebacks the
        # daemon never shows (it logs JSON to journald): about 4 MB of idle RSS saved.
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
        from edge.app.daemon import run_daemon

        return run_daemon(args.config, sim_speed=args.sim_speed)

    handlers["run"] = run


def register_asyncapi(sub: Sub, handlers: dict[str, Handler]) -> None:
    from edge.cli.asyncapi import register_asyncapi as register

    register(sub, handlers)


def register_simulate_day(sub: Sub, handlers: dict[str, Handler]) -> None:
    from edge.cli.simulate_day import register_simulate_day as register

    register(sub, handlers)


def register_sim(sub: Sub, handlers: dict[str, Handler]) -> None:
    from sim.cli import register_sim as register

    register(sub, handlers)


def register_demo(sub: Sub, handlers: dict[str, Handler]) -> None:
    from sim.cli import register_demo as register

    register(sub, handlers)


def register_ctl(sub: Sub, handlers: dict[str, Handler]) -> None:
    from edge.cli.ctl import register

    register(sub, handlers)


def register_journal(sub: Sub, handlers: dict[str, Handler]) -> None:
    from edge.cli.journal import register

    register(sub, handlers)


REGISTRY: list[Register] = [
    register_check_config,
    register_run,
    register_asyncapi,
    register_simulate_day,
    register_ctl,
    register_journal,
    register_sim,
    register_demo,
]
