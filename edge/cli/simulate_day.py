"""`swapd simulate-day`: the scheduler over a simulated day, KPIs as one JSON line on stdout.

Only argparse at import; the scenario loader, the simulation, scipy (optimal) and matplotlib
(--plot) are imported inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT = 0, 1, 2


def register_simulate_day(sub: Any, handlers: dict[str, Any]) -> None:
    p = sub.add_parser(
        "simulate-day",
        help="run the charging scheduler over a simulated day and print its KPIs",
        description="Discrete-event simulation of 24 h of swaps and charging under a policy. "
        "The last stdout line is one JSON object of KPIs.",
    )
    p.add_argument(
        "--scenario", required=True, help="scenario YAML path, or builtin:NAME (city-taxi-day, ...)"
    )
    p.add_argument(
        "--policy",
        required=True,
        choices=["naive", "smart", "predictive", "optimal", "optimal-lp"],
        help="predictive = rolling-horizon optimisation (HiGHS); optimal = perfect-foresight "
        "whole-pack MIP (best schedule + bound_cost, gap_pct); optimal-lp = its LP relaxation",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=120.0,
        metavar="S",
        help="optimal: the MIP's time limit in seconds (default 120)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of arrivals (default 0)")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.add_argument("--plot", metavar="FILE.png", help="plot grid power, tariff and ready packs")
    handlers["simulate-day"] = _simulate_day


class _Bar:
    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, fraction: float) -> None:
        n = int(round(fraction * 30))
        end = "\n" if fraction >= 1.0 else ""
        print(
            f"\r{self.label} [{'#' * n}{'.' * (30 - n)}] {fraction * 100:5.1f} %",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def _simulate_day(args: argparse.Namespace) -> int:
    from drivers.core.datafile import DataFileError
    from edge.scheduler.scenario import load_scenario
    from edge.scheduler.simday import DayResult, simulate_day

    try:
        scenario = load_scenario(args.scenario)
    except DataFileError as e:
        print(str(e), file=sys.stderr)
        return EXIT_BAD_INPUT
    bar = _Bar(f"{scenario.name} {args.policy}") if args.progress else None
    result: DayResult
    try:
        if args.policy in ("optimal", "optimal-lp"):
            from edge.scheduler.optimal import OptimalError, solve_day

            if bar is not None:
                bar(0.0)
            try:
                limit = args.time_limit if args.policy == "optimal" else None
                result = solve_day(
                    scenario, args.seed, record=bool(args.plot), integer_ready_s=limit
                )
            except OptimalError as e:
                print(f"swapd simulate-day: {e}", file=sys.stderr)
                return EXIT_RUNTIME
            if bar is not None:
                bar(1.0)
        else:
            result = simulate_day(
                scenario, args.policy, args.seed, progress=bar, record=bool(args.plot)
            )
        if args.plot:
            from edge.scheduler.plot import plot_day

            plot_day(result, scenario, args.plot)
    except OSError as e:
        print(f"swapd simulate-day: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(result.kpis, sort_keys=False))
    return EXIT_OK
