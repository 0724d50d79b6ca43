"""Scheduler benchmark: allocation time per call (24 and 200 slots, p50/p99) and simulate-day
wall time per policy on the city taxi day.

    .venv/bin/python bench/scheduler.py [--calls N] [--no-day]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from edge.scheduler.config import GridConfig
from edge.scheduler.core import Instant, Scheduler, SlotInput
from edge.scheduler.plan import PlanRequest
from edge.scheduler.policies import POLICY_NAMES, make_policy
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
    for policy in ("naive", "smart", "predictive", "optimal-lp"):
        walls = []
        cost = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            if policy == "optimal-lp":
                k = solve_day(sc, 1).kpis
            else:
                k = simulate_day(sc, policy, 1).kpis
            walls.append(time.perf_counter() - t0)
            cost = float(k["energy_cost"])  # type: ignore[arg-type]
        print(
            f"simulate-day city-taxi-day {policy:7s} wall median {statistics.median(walls):5.2f} s"
            f"  max {max(walls):5.2f} s  (cost {cost:.0f} CNY)"
        )


POLICIES = POLICY_NAMES
SCENARIOS = ("city-taxi-day", "grid-emergency-day", "heat-wave-day", "demand-charge-day")


def _run(job: tuple[str, str, int, float]) -> dict[str, object]:
    from edge.scheduler.optimal import solve_day
    from edge.scheduler.simday import simulate_day

    name, policy, seed, mip_s = job
    sc = load_scenario(ROOT / "edge" / "scheduler" / "scenarios" / f"{name}.yaml")
    t0 = time.perf_counter()
    if policy == "optimal":
        k = solve_day(sc, seed, integer_ready_s=mip_s).kpis
    elif policy == "optimal-lp":
        k = solve_day(sc, seed).kpis
    else:
        k = simulate_day(sc, policy, seed).kpis
    k["wall_s"] = round(time.perf_counter() - t0, 1)
    return k


def goal_table(seeds: list[int], mip_s: float, workers: int) -> None:
    """Every policy x scenario x seed, then the issue's goals per scenario and seed."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    jobs = [(n, p, s, mip_s) for n in SCENARIOS for s in seeds for p in POLICIES]
    by: dict[tuple[str, str, int], dict[str, object]] = {}
    with ProcessPoolExecutor(max_workers=workers) as ex:
        futs = {ex.submit(_run, j): j for j in jobs}
        for f in as_completed(futs):
            j = futs[f]
            try:
                by[j[:3]] = f.result()
            except Exception as e:
                by[j[:3]] = {"error": repr(e)}
            # Progress on stderr: a long table is not lost to one failure.
            print(j[:3], by[j[:3]], file=sys.stderr, flush=True)
    print(
        "| scenario | policy | seed | cost CNY | bound CNY | waits | wait min "
        "| peak-period kWh | peak kW | cap viol. | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for j in jobs:
        k = by[j[:3]]
        if "error" in k:
            print(f"| {j[0]} | {j[1]} | {j[2]} | {k['error']} |||||||||")
            continue
        bound = k.get("bound_cost")
        print(
            f"| {j[0]} | {j[1]} | {j[2]} | {float(k['energy_cost']):.0f} "  # type: ignore[arg-type]
            f"| {'' if bound is None else f'{float(bound):.0f}'} | {k['swaps_waited']} "  # type: ignore[arg-type]
            f"| {float(k['wait_minutes_total']):.1f} "  # type: ignore[arg-type]
            f"| {float(k['peak_period_energy_kwh']):.0f} "  # type: ignore[arg-type]
            f"| {float(k.get('demand_peak_kw', k['peak_grid_kw'])):.0f} "  # type: ignore[arg-type]
            f"| {k['cap_violations']} | {k['wall_s']} |"
        )
    print()
    print(
        "| scenario | seed | predictive share of naive->bound saving | smart share "
        "| peak-period cut vs naive (pred / smart) | waits pred / smart / naive "
        "| optimal gap % | replans | fallbacks | solve ms mean / p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in SCENARIOS:
        for s in seeds:
            n, sm, pr, op = (by[(name, p, s)] for p in ("naive", "smart", "predictive", "optimal"))
            if any("error" in x for x in (n, sm, pr, op)):
                print(f"| {name} | {s} | (a run failed, see above) |||||||||")
                continue
            nc, sc_, pc = (float(x["energy_cost"]) for x in (n, sm, pr))  # type: ignore[arg-type]
            bc = float(op["bound_cost"])  # type: ignore[arg-type]
            npk, spk, ppk = (float(x["peak_period_energy_kwh"]) for x in (n, sm, pr))  # type: ignore[arg-type]
            share = (nc - pc) / (nc - bc) * 100 if nc > bc else float("nan")
            sshare = (nc - sc_) / (nc - bc) * 100 if nc > bc else float("nan")
            print(
                f"| {name} | {s} | {share:.0f} % | {sshare:.0f} % "
                f"| {(1 - ppk / npk) * 100:.0f} % / {(1 - spk / npk) * 100:.0f} % "
                f"| {pr['swaps_waited']} / {sm['swaps_waited']} / {n['swaps_waited']} "
                f"| {op['gap_pct']} | {pr.get('replans')} | {pr.get('fallbacks')} "
                f"| {pr.get('solve_ms_mean')} / {pr.get('solve_ms_p99')} |",
                flush=True,
            )


class _Keep:
    """A planner that only keeps the questions (the bench times the solves itself)."""

    def __init__(self) -> None:
        self.requests: list[PlanRequest] = []

    def submit(self, req: PlanRequest) -> None:
        self.requests.append(req)

    def poll(self) -> None:
        return None


def bench_solve(calls: int) -> None:
    """The predictive policy's LP: 24 slots, 12 h horizon, at times across the day."""
    from edge.scheduler.mpc import solve
    from edge.scheduler.predictive import PredictivePolicy

    grid = load_scenario(TAXI).grid
    rng = random.Random(2)
    scale = 24 / 20
    cfg = grid.model_copy(
        update={
            "cap_kw": grid.cap_kw * scale,
            "swap_forecast_per_hour": [x * scale for x in grid.swap_forecast_per_hour],
        }
    )
    times: list[float] = []
    sizes: list[int] = []
    for k in range(calls):
        keep = _Keep()
        pol = PredictivePolicy(keep, horizon_s=12 * 3600)
        sched = Scheduler(cfg, pol)
        day = (k * 1777.0) % 86400
        sched.allocate(Instant(0.0, day), _slots(24, rng))
        req = keep.requests[0]
        t0 = time.perf_counter()
        plan = solve(req)
        times.append(time.perf_counter() - t0)
        sizes.append(len(req.packs))
        assert plan.ok, plan.reason
    ms = [x * 1000 for x in times]
    print(
        f"predictive LP 24 slots 12 h+ horizon: mean {statistics.mean(ms):6.1f} ms  "
        f"p50 {statistics.median(ms):6.1f} ms  p99 {_pct(ms, 0.99):6.1f} ms  "
        f"max {max(ms):6.1f} ms  ({calls} solves, {statistics.mean(sizes):.0f} packs on average)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--no-day", action="store_true")
    ap.add_argument(
        "--table",
        nargs="?",
        const="1,2,3,4,5",
        metavar="SEEDS",
        help="instead: every policy x scenario x seed and the goals (seeds 1,2,3,4,5)",
    )
    ap.add_argument(
        "--mip", type=float, default=120.0, metavar="S", help="optimal's time limit (120 s)"
    )
    ap.add_argument("--workers", type=int, default=2, help="--table runs in parallel")
    ap.add_argument("--solve", type=int, metavar="N", help="instead: N predictive LP solves")
    args = ap.parse_args()
    if args.table:
        goal_table([int(x) for x in args.table.split(",")], args.mip, args.workers)
        return
    if args.solve:
        bench_solve(args.solve)
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
