"""The predictive policy: the LP's invariants (limits, rates, taper, deadlines, max SOC, the
demand charge), replan triggers and debounce, and the fallback to smart (injected solver, no
sleeps: time is the `Instant` passed in)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.scheduler.core import Allocation, Instant, Scheduler, SlotInput
from edge.scheduler.mpc import solve
from edge.scheduler.plan import HullLine, Plan, PlanPack, PlanRequest
from edge.scheduler.policies import SmartPolicy
from edge.scheduler.predictive import InlinePlanner, PredictivePolicy
from edge.scheduler.scenario import load_scenario
from edge.scheduler.service import SchedulerService
from edge.scheduler.simday import simulate_day
from edge.scheduler.solver import READY, ProcessPlanner
from tests.doubles import ManualClock
from tests.edge.scheduler_fixtures import grid_config, write_small

ROOT = Path(__file__).resolve().parents[2]
EFF, CAP = 0.95, 70.0


def _req(packs: list[PlanPack], **over: object) -> PlanRequest:
    n = 8
    data: dict[str, object] = {
        "seq": 1,
        "t0_s": 0.0,
        "day_s": 0.0,
        "steps_s": (900.0,) * n,
        # Expensive first half, cheap second half.
        "price": (1.2,) * 4 + (0.3,) * 4,
        "limit_kw": (100.0,) * n,
        "packs": tuple(packs),
        "capacity_kwh": CAP,
        "efficiency": EFF,
        "ready_soc_pct": 90.0,
        "max_soc_pct": 95.0,
        "hull": (HullLine(60.0, 0.0), HullLine(260.0, -2.5)),
        "terminal_price": 0.2,
    }
    data.update(over)
    return PlanRequest(**data)  # type: ignore[arg-type]


def _check_invariants(req: PlanRequest, plan: Plan) -> None:
    assert plan.ok, plan.reason
    for t, kw in enumerate(plan.grid_kw):
        assert kw <= req.limit_kw[t] + 1e-6
    for p in req.packs:
        traj = plan.soc_pct.get(p.key)
        if traj is None:
            continue
        soc = p.soc_pct
        for t, s in enumerate(traj):
            assert s >= soc - 1e-6  # never discharges
            assert s <= req.max_soc_pct + 1e-6
            kwh = (s - soc) / 100 * CAP
            dt_h = req.steps_s[t] / 3600
            assert kwh <= p.rated_kw * EFF * dt_h + 1e-6
            # taper at the end-of-step SOC
            assert kwh <= EFF * dt_h * (260.0 - 2.5 * s) + 1e-6
            soc = s


def test_lp_defers_to_cheap_steps_and_respects_limits() -> None:
    packs = [PlanPack("a", 40.0, 60.0), PlanPack("b", 40.0, 60.0, deadline_s=3600.0)]
    req = _req(packs, terminal_price=0.301)  # stored energy worth a hair above the cheapest
    plan = solve(req)
    _check_invariants(req, plan)
    # a has no swap in the horizon: it waits for the cheap half; b must be ready by 1 h.
    assert plan.soc_pct["a"][3] == pytest.approx(40.0, abs=1e-6)
    assert plan.soc_pct["b"][3] >= 90.0 - 1e-6
    assert plan.short_kwh == pytest.approx(0.0, abs=1e-6)
    assert sum(plan.grid_kw[4:]) > 0


def test_lp_shortfall_when_deadline_is_impossible_and_limit_binds() -> None:
    packs = [PlanPack(k, 10.0, 60.0, deadline_s=900.0) for k in "abc"]
    req = _req(packs, limit_kw=(50.0,) * 8)
    plan = solve(req)
    _check_invariants(req, plan)
    assert plan.short_kwh > 0
    assert plan.grid_kw[0] == pytest.approx(50.0, abs=1e-3)  # everything it can, at once


def test_lp_forecast_pack_charges_only_once_docked() -> None:
    packs = [PlanPack("f0", 20.0, 60.0, from_s=1800.0, deadline_s=6000.0)]
    plan = solve(_req(packs))
    assert plan.ok
    assert plan.grid_kw[0] == 0.0 and plan.grid_kw[1] == 0.0
    assert max(plan.grid_kw[2:]) > 0


def test_lp_demand_charge_flattens_the_peak() -> None:
    packs = [PlanPack(k, 30.0, 60.0, deadline_s=2 * 3600) for k in "abc"]
    flat_price = {"price": (0.7,) * 8, "limit_kw": (200.0,) * 8}
    no_dc = solve(_req(packs, **flat_price))
    dc = solve(_req(packs, demand_charge_per_kw=30.0, **flat_price))
    assert no_dc.ok and dc.ok
    assert max(dc.grid_kw) < max(no_dc.grid_kw) - 1
    # The same energy by the deadline: 3 packs x 42 kWh / 0.95 over 2 h is ~66 kW flat.
    assert max(dc.grid_kw) == pytest.approx(3 * 0.6 * CAP / EFF / 2, rel=0.02)


def test_lp_finishes_the_earliest_deadline_first_under_a_binding_limit() -> None:
    # One charger's worth of power, equal prices: the pack due first is charged first, so
    # a derating or arrivals bunching up find it ready instead of two packs half charged.
    packs = [
        PlanPack("late", 40.0, 60.0, deadline_s=2 * 3600.0),
        PlanPack("soon", 40.0, 60.0, deadline_s=3600.0),
    ]
    req = _req(packs, price=(0.7,) * 8, limit_kw=(60.0,) * 8, terminal_price=0.3)
    plan = solve(req)
    _check_invariants(req, plan)
    assert plan.short_kwh == pytest.approx(0.0, abs=1e-6)
    assert plan.soc_pct["late"][0] == pytest.approx(40.0, abs=1e-6)
    assert plan.soc_pct["soon"][1] > 80.0
    assert plan.soc_pct["soon"][1] - 40.0 > 10 * (plan.soc_pct["late"][1] - 40.0)
    # At a cheap price, as early as the limit allows.
    assert plan.grid_kw[0] == pytest.approx(60.0, abs=1e-3)


def test_lp_buys_the_peak_share_of_a_later_swap_at_the_peak_end() -> None:
    # A swap after the peak that the cheap steps alone cannot make ready: the peak's share
    # is bought at the peak's end (energy bought late is energy the next replan may find it
    # does not need); a swap inside the peak is made ready as early as possible.
    packs = [
        PlanPack("after", 40.0, 60.0, deadline_s=7200.0),
        PlanPack("inside", 70.0, 60.0, deadline_s=5400.0),
    ]
    req = _req(packs, price=(1.2,) * 6 + (0.3,) * 2, terminal_price=0.3, limit_kw=(200.0,) * 8)
    plan = solve(req)
    _check_invariants(req, plan)
    assert plan.short_kwh == pytest.approx(0.0, abs=1e-6)
    after, inside = plan.soc_pct["after"], plan.soc_pct["inside"]
    assert after[4] == pytest.approx(40.0, abs=1e-6)
    assert after[5] > 40.0  # the last peak step
    assert after[7] >= 90.0 - 1e-6
    assert inside[0] > 70.0 + 10.0
    assert inside[1] >= 90.0 - 1e-6


@pytest.mark.parametrize("buffer", [None, 0, 1])
def test_plan_keeps_buffer_packs_ready_beyond_the_margin(buffer: int | None) -> None:
    cfg = grid_config(policy="predictive")
    planner = _Scripted("lp")
    sched = Scheduler(cfg, PredictivePolicy(planner, buffer_packs=buffer))
    sched.allocate(Instant(0.0, 9 * 3600.0), _slots(6))
    req = planner.requests[0]
    now = [p for p in req.packs if p.deadline_s == 0.0]
    want = cfg.reserve.buffer_packs if buffer is None else buffer
    assert cfg.reserve.buffer_packs == 2  # the default
    assert len(now) == cfg.reserve.margin_packs + want


def _slots(n: int = 4, soc: float = 40.0) -> list[SlotInput]:
    return [
        SlotInput(f"s{i}", soc, bms_limit_kw=60.0, charger_rating_kw=60.0, docked_at_s=0.0)
        for i in range(n)
    ]


class _Scripted:
    """A planner whose answers the test decides: raising, timing out, or the real LP."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[PlanRequest] = []
        self._done: Plan | None = None

    def submit(self, req: PlanRequest) -> None:
        self.requests.append(req)
        if self.mode == "timeout":
            self._done = Plan.failed(req, "timeout", 2.0)
        elif self.mode == "silent":
            self._done = None  # a solver process that never answers
        else:
            self._done = solve(req)

    def poll(self) -> Plan | None:
        done, self._done = self._done, None
        return done


def _raising(req: PlanRequest) -> Plan:
    raise RuntimeError("solver crashed")


@pytest.mark.parametrize("mode", ["timeout", "raises"])
def test_failed_solve_falls_back_to_smart_counted(mode: str) -> None:
    cfg = grid_config(policy="predictive")
    planner = _Scripted("timeout") if mode == "timeout" else InlinePlanner(_raising)
    pol = PredictivePolicy(planner)
    sched = Scheduler(cfg, pol)
    ref = Scheduler(cfg, SmartPolicy())
    now = Instant(100.0, 9 * 3600.0)
    alloc = sched.allocate(now, _slots())
    want = ref.allocate(now, _slots())
    assert [g.power_kw for g in alloc.grants] == [g.power_kw for g in want.grants]
    assert alloc.grid_reason.startswith("fallback to smart")
    reason = "timeout" if mode == "timeout" else "error"
    assert pol.fallbacks[reason] == 1
    assert pol.stats()["fallbacks"] == 1


def test_plan_followed_then_stale_plan_falls_back() -> None:
    cfg = grid_config(policy="predictive")
    planner = _Scripted("lp")
    pol = PredictivePolicy(planner, max_age_s=900.0, replan_s=300.0)
    sched = Scheduler(cfg, pol)
    # 09:00, a peak: one pack below ready must be ready for the swaps expected soon.
    slots = _slots(4, 95.0)[:3] + [SlotInput("s3", 50.0, bms_limit_kw=60.0, charger_rating_kw=60.0)]
    alloc = sched.allocate(Instant(0.0, 9 * 3600.0), slots)
    assert pol.plan is not None and pol.solved == 1
    assert "plan" in alloc.grid_reason
    assert all(g.power_kw <= g.limit_kw + 1e-9 for g in alloc.grants)
    # The solver goes silent: the plan ages out after max_age_s and smart takes over.
    planner.mode = "silent"
    t = 0.0
    while t < 1000.0:
        t += 5.0
        alloc = sched.allocate(Instant(t, 9 * 3600.0 + t), slots)
    assert pol.plan is None
    assert pol.fallbacks["stale"] == 1
    assert alloc.grid_reason.startswith("fallback to smart (stale)")


def test_triggers_debounced_except_faults_and_limits() -> None:
    cfg = grid_config(policy="predictive")
    planner = _Scripted("lp")
    pol = PredictivePolicy(planner, debounce_s=30.0, replan_s=300.0)
    sched = Scheduler(cfg, pol)
    slots = _slots()
    sched.allocate(Instant(0.0, 3600.0), slots)
    assert len(planner.requests) == 1
    for t in (5.0, 10.0, 15.0):
        sched.trigger("pack_docked")
        sched.allocate(Instant(t, 3600.0 + t), slots)
    assert len(planner.requests) == 1  # held back: within 30 s of the last replan
    sched.trigger("fault")
    sched.allocate(Instant(20.0, 3620.0), slots)
    assert len(planner.requests) == 2  # a fault replans at once
    sched.set_power_limit(100.0, 500.0, 21.0)
    sched.allocate(Instant(21.0, 3621.0), slots)
    assert len(planner.requests) == 3  # so does a new limit
    assert planner.requests[-1].limit_kw[0] == 100.0
    sched.trigger("pack_docked")
    sched.allocate(Instant(25.0, 3625.0), slots)
    sched.allocate(Instant(45.0, 3645.0), slots)
    assert len(planner.requests) == 3
    sched.allocate(Instant(52.0, 3652.0), slots)  # the held dock trigger, 30 s later
    assert len(planner.requests) == 4
    sched.allocate(Instant(353.0, 3953.0), slots)  # and the periodic replan
    assert len(planner.requests) == 5


def test_small_day_predictive_serves_every_swap_within_limits_and_plots(tmp_path: Path) -> None:
    from edge.scheduler.plot import plot_day

    sc = load_scenario(write_small(tmp_path))
    r = simulate_day(sc, "predictive", 3, record=True)
    k = r.kpis
    assert k["swaps_served"] == k["swaps_requested"]
    assert k["cap_violations"] == 0
    assert k["fallbacks"] == 0
    naive = simulate_day(sc, "naive", 3).kpis
    assert float(k["energy_cost"]) < float(naive["energy_cost"])  # type: ignore[arg-type]
    # --plot: the plan in force and the hourly horizons against what happened.
    assert r.plans and any(s.plan_kw is not None for s in r.samples)
    png = tmp_path / "day.png"
    plot_day(r, sc, png)
    assert png.stat().st_size > 10_000


def test_predictive_policy_module_keeps_numpy_out() -> None:
    code = (
        "import sys\n"
        "import edge.scheduler.predictive, edge.scheduler.plan\n"
        "from edge.scheduler.policies import make_policy\n"
        "make_policy('predictive')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('scipy', 'numpy', 'highspy'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


async def _until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)


async def test_service_owns_the_solver_process_and_restarts_it(clock: ManualClock) -> None:
    """The daemon's side: solves in a child process (the loop never waits on one), a plan
    arrives as a trigger, a killed solver answers "solver_died", is started again, and the
    next replan is planned again."""
    pol = PredictivePolicy()
    sched = Scheduler(grid_config(policy="predictive"), pol)
    published: list[Allocation] = []
    slots = _slots(4, 30.0)
    svc = SchedulerService(sched, clock, lambda: list(slots), published.append)
    assert svc.solver is not None and pol.planner is svc.solver
    task = asyncio.create_task(svc.run(), name="scheduler")
    try:
        # The first allocation does not wait for the solver: smart until the plan is in.
        await _until(lambda: len(published) >= 1)
        assert published[0].grid_reason.startswith("fallback to smart (waiting for a plan)")
        await _until(lambda: pol.solved == 1)
        await _until(lambda: "plan" in published[-1].trigger)
        horizon = svc.plan_horizon()
        assert horizon and all(s["ends_in_s"] <= 6 * 3600 for s in horizon)
        pid = svc.solver.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        svc.trigger("fault")  # replans at once: the dead solver answers for it
        await _until(lambda: pol.fallbacks["solver_died"] == 1)
        assert published[-1].grid_reason.startswith("fallback to smart (solver_died)")
        svc.trigger("fault_cleared")
        await _until(lambda: pol.solved == 2, 60.0)  # a child's start on a loaded machine
        assert svc.solver.starts == 2 and svc.solver.pid != pid
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert svc.solver.pid is None  # the child is gone with the service


def _child(script: str) -> list[str]:
    return [sys.executable, "-c", f"import sys, time\n{script}"]


async def _answered(planner: ProcessPlanner, timeout_s: float = 20.0) -> Plan:
    async with asyncio.timeout(timeout_s):
        while (plan := planner.poll()) is None:
            await asyncio.sleep(0.01)
    return plan


async def test_a_slow_solver_start_is_not_taken_for_a_slow_solve() -> None:
    """The reply timeout counts from the question, which is sent only once the child has loaded
    its libraries and said so: a start slower than the timeout (a loaded machine) still plans."""
    answer = solve(_req([PlanPack("p1", 30.0, 120.0, 0.0)])).to_json()
    planner = ProcessPlanner(
        command=_child(
            f"time.sleep(2.5)\nprint({READY!r}.decode(), flush=True)\n"
            f"for _ in sys.stdin:\n    print({answer!r}, flush=True)"
        ),
        reply_timeout_s=2.0,
    )
    planner.submit(_req([PlanPack("p1", 30.0, 120.0, 0.0)]))
    task = asyncio.create_task(planner.run())
    try:
        plan = await _answered(planner)
        assert plan.ok, plan.reason
        assert planner.starts == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert planner.pid is None


async def test_a_solver_that_never_gets_ready_is_restarted_and_its_question_answered() -> None:
    planner = ProcessPlanner(
        command=_child("time.sleep(60)"), start_timeout_s=0.3, restart_delay_s=0.05
    )
    planner.submit(_req([PlanPack("p1", 30.0, 120.0, 0.0)]))
    task = asyncio.create_task(planner.run())
    try:
        plan = await _answered(planner)
        assert not plan.ok and plan.reason == "solver_died"
        await _until(lambda: planner.starts >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert planner.pid is None


def test_swap_requests_feed_the_queue_and_the_forecast(clock: ManualClock) -> None:
    """The live station tells the scheduler of every swap request: a refused vehicle waits
    (the reserve counts it) until served or gone for WAIT_FORGET_S; a first request is an
    arrival for the forecast."""
    sched = Scheduler(grid_config(), SmartPolicy())
    svc = SchedulerService(sched, clock, lambda: _slots(), lambda a: None)
    base = svc.allocate_now().reserve_packs
    svc.vehicle_request("TAXI-1", "no LFP pack qualifies")
    svc.vehicle_request("TAXI-1", "no LFP pack qualifies")  # a retry is not a new arrival
    svc.vehicle_request("TAXI-2", "a swap is already running")
    assert svc.allocate_now().reserve_packs == base + 2
    assert len(sched.forecast._seen) == 2
    svc.vehicle_request("TAXI-1", None)  # served
    assert svc.allocate_now().reserve_packs == base + 1
    clock.advance(SchedulerService.WAIT_FORGET_S + 1)
    svc.vehicle_request("TAXI-3", None)
    assert sched.pending_triggers == ("queue",) or "queue" in sched.pending_triggers
    alloc = svc.allocate_now()
    assert alloc.reserve_packs >= 0 and svc._waiting == {}
