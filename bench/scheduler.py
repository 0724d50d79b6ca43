"""Scheduler benchmark: allocation time per call (24 and 200 slots, p50/p99) and simulate-day
wall time per policy on the city taxi day.

    .venv/bin/python bench/scheduler.py [--calls N] [--no-day]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from edge.scheduler.config import GridConfig
from edge.scheduler.core import Instant, Scheduler, SlotInput
from edge.scheduler.policies import make_policy
from edge.scheduler.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
TAXI = ROOT / "edge" / "scheduler" / "scenarios" / "city-taxi-day.yaml"


def _slots(n: int, rng: random.Random) -> list[SlotInput]:
    out = []
    for i in range(n):
        soc = None if rng.random() < 0.05 else rng.uniform(5, 95)
        out.append(
            SlotInput(
                f"s{i}",
                soc,
                bms_limit_kw=60.0 if soc is None or soc < 80 else 60 - 2.5 * (soc - 80),
                charger_rating_kw=60.0,
                derate_factor=1.0,
                faulted=rng.random() < 0.02,
                docked_at_s=rng.uniform(0, 3600),
            )
        )
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_allocation(grid: GridConfig, n_slots: int, policy: str, calls: int, trig: bool) -> str:
    rng = random.Random(1)
    # Scale the cap and the forecast with the station so the planner has real work.
    scale = n_slots / 20
    cfg = grid.model_copy(
        update={
            "cap_kw": grid.cap_kw * scale,
            "swap_forecast_per_hour": [x * scale for x in grid.swap_forecast_per_hour],
        }
    )
    sched = Scheduler(cfg, make_policy(policy))
    slots = _slots(n_slots, rng)
    times: list[float] = []
    t = 0.0
    for k in range(calls):
        t += cfg.period_s
        if trig:
            sched.trigger("pack_docked")  # forces the smart policy to replan
        if k % 10 == 0:
            slots = _slots(n_slots, rng)
        t0 = time.perf_counter()
        sched.allocate(Instant(t, (8 * 3600 + t) % 86400), slots)
        times.append(time.perf_counter() - t0)
    us = [x * 1e6 for x in times]
    kind = "trigger (replan)" if trig else "period"
    return (
        f"{policy:6s} {n_slots:4d} slots {kind:17s} p50 {statistics.median(us):8.1f} us"
        f"  p99 {_pct(us, 0.99):8.1f} us  ({calls} calls)"
    )


def bench_day() -> None:
    from edge.scheduler.optimal import solve_day
    from edge.scheduler.simday import simulate_day

    sc = load_scenario(TAXI)
    for policy in ("naive", "smart", "optimal"):
        walls = []
        cost = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            if policy == "optimal":
                k = solve_day(sc, 1).kpis
            else:
                k = simulate_day(sc, policy, 1).kpis
            walls.append(time.perf_counter() - t0)
            cost = float(k["energy_cost"])  # type: ignore[arg-type]
        print(
            f"simulate-day city-taxi-day {policy:7s} wall median {statistics.median(walls):5.2f} s"
            f"  max {max(walls):5.2f} s  (cost {cost:.0f} CNY)"
        )


def goal_table(seeds: list[int], mip_s: float | None) -> None:
    """The issue's goals, measured: policy x scenario, per seed and mean."""
    from edge.scheduler.optimal import solve_day
    from edge.scheduler.simday import simulate_day

    names = ("city-taxi-day", "grid-emergency-day", "heat-wave-day")
    print(
        "| scenario | policy | seed | cost CNY | waits | wait min | peak-period kWh | cap viol. |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        sc = load_scenario(ROOT / "edge" / "scheduler" / "scenarios" / f"{name}.yaml")
        rows: dict[str, list[dict[str, object]]] = {}
        for seed in seeds:
            for policy in ("naive", "smart", "optimal"):
                if policy == "optimal":
                    k = solve_day(sc, seed).kpis
                else:
                    k = simulate_day(sc, policy, seed).kpis
                rows.setdefault(policy, []).append(k)
                print(
                    f"| {name} | {policy} | {seed} | {k['energy_cost']:.0f} | {k['swaps_waited']} "
                    f"| {k['wait_minutes_total']:.1f} | {k['peak_period_energy_kwh']:.0f} "
                    f"| {k['cap_violations']} |",
                    flush=True,
                )
        for seed_i, seed in enumerate(seeds):
            n, s_, o = (rows[p][seed_i] for p in ("naive", "smart", "optimal"))
            nc, sc_, oc = (float(x["energy_cost"]) for x in (n, s_, o))  # type: ignore[arg-type]
            npk, spk = (float(x["peak_period_energy_kwh"]) for x in (n, s_))  # type: ignore[arg-type]
            captured = (nc - sc_) / (nc - oc) if nc > oc else float("nan")
            if mip_s is not None:
                mip = solve_day(sc, seed, integer_ready_s=mip_s).kpis
                mc = float(mip["energy_cost"])  # type: ignore[arg-type]
                print(
                    f"  {name} seed {seed}: MIP dual bound after {mip_s:g} s {mc:.0f} CNY "
                    f"(MIP best schedule {mip['mip_primal_cost']:.0f}); smart captures "
                    f"{(nc - sc_) / (nc - mc) * 100:.0f} % of its saving"
                )
            print(
                f"  {name} seed {seed}: smart captures {captured * 100:.0f} % of the LP-bound saving;"
                f" peak-period energy {(1 - spk / npk) * 100:.0f} % below naive;"
                f" waits smart {s_['swaps_waited']} vs naive {n['swaps_waited']}"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--no-day", action="store_true")
    ap.add_argument(
        "--table", metavar="SEEDS", help="instead: the goal table for seeds, e.g. 1,2,3"
    )
    ap.add_argument(
        "--mip", type=float, metavar="S", help="with --table: also the MIP bound, S s per run"
    )
    args = ap.parse_args()
    if args.table:
        goal_table([int(x) for x in args.table.split(",")], args.mip)
        return
    grid = load_scenario(TAXI).grid
    for n in (24, 200):
        for policy in ("naive", "smart"):
            print(bench_allocation(grid, n, policy, args.calls, trig=False))
        print(bench_allocation(grid, n, "smart", max(50, args.calls // 10), trig=True))
    if not args.no_day:
        bench_day()


if __name__ == "__main__":
    main()
