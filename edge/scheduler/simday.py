"""A simulated day: discrete-event simulation of arrivals, swaps and charging around the live
scheduler core. No I/O, no numpy: the daemon could run it, and tests do.

Time advances from event to event: the scheduler period, vehicle arrivals, scenario events
(dispatch limits, derating, faults, export requests), tariff boundaries, and, while vehicles
queue, the moment a charging pack reaches the ready SOC. Grants are constant between
allocations; a pack draws min(grant, its BMS curve, charger rating x derating) and stops at the
max SOC. Powers are grid-side; a pack receives `charging_efficiency` of them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.scheduler.config import DAY_S
from edge.scheduler.core import Allocation, Instant, Scheduler, SlotInput
from edge.scheduler.policies import make_policy
from edge.scheduler.scenario import Scenario
from edge.scheduler.tariff import Tariff

_HOUR_S = 3600.0
_VIOLATION_KW = 0.1


@dataclass(frozen=True, slots=True)
class Arrival:
    t_s: float
    soc_pct: float


def draw_arrivals(scenario: Scenario, seed: int) -> list[Arrival]:
    """The day's vehicles: per-hour counts from the scenario, times uniform within the hour,
    SOC normal and clipped. Same seed, same day, whatever the policy."""
    rng = random.Random(seed)
    a = scenario.arrivals
    out: list[Arrival] = []
    for h, n in enumerate(a.swaps_per_hour):
        for _ in range(n):
            t = h * _HOUR_S + rng.uniform(0.0, _HOUR_S)
            soc = min(a.soc.max_pct, max(a.soc.min_pct, rng.gauss(a.soc.mean_pct, a.soc.std_pct)))
            out.append(Arrival(t, soc))
    out.sort(key=lambda x: x.t_s)
    return out


@dataclass(slots=True)
class _Slot:
    slot_id: str
    soc_pct: float | None
    docked_at_s: float = 0.0
    derate: float = 1.0
    faulted: bool = False
    power_kw: float = 0.0  # the grant in force


@dataclass(slots=True)
class Sample:
    t_s: float
    grid_kw: float
    limit_kw: float
    price_per_kwh: float
    ready_packs: int
    plan_kw: float | None = None  # predictive: the plan's grid power for this moment


@dataclass(slots=True)
class DayResult:
    kpis: dict[str, object]
    samples: list[Sample] = field(default_factory=list)
    # predictive: every hour, the plan's horizon then (t_s, [(step end t_s, planned kW)])
    plans: list[tuple[float, list[tuple[float, float]]]] = field(default_factory=list)


def _kpi_round(x: float) -> float:
    return round(x, 3)


class _Timeline:
    """Scenario events as (time, order, apply) edges: starts and ends."""

    def __init__(self, scenario: Scenario) -> None:
        edges: list[tuple[float, int, str, int]] = []
        for i, e in enumerate(scenario.events):
            edges.append((e.start_s, 1, "start", i))
            edges.append((e.end_s, 0, "end", i))
        edges.sort()
        self.edges = deque(edges)

    def next_s(self) -> float:
        return self.edges[0][0] if self.edges else math.inf


def simulate_day(
    scenario: Scenario,
    policy: str,
    seed: int = 0,
    *,
    progress: Callable[[float], None] | None = None,
    record: bool = False,
) -> DayResult:
    """Run 00:00-24:00 with a live policy (`naive`, `smart`, `predictive`). KPIs as a dict."""
    st = scenario.station
    grid = scenario.grid
    pack = st.pack
    cap_kwh = pack.capacity_kwh
    eff = pack.charging_efficiency
    ready_soc = grid.ready_soc_pct
    max_soc = grid.max_soc_pct
    curve = pack.curve()
    sched = Scheduler(grid, make_policy(policy))
    horizon_of = getattr(sched.policy, "horizon_kw", None)
    plans: list[tuple[float, list[tuple[float, float]]]] = []
    next_plan_s = 0.0
    quarter_kwh: dict[int, float] = {}
    tariff = Tariff(grid.tariff)
    arrivals = deque(draw_arrivals(scenario, seed))
    n_requested = len(arrivals)
    slots = [_Slot(f"s{i}", st.initial_soc_pct if i < st.packs else None) for i in range(st.slots)]
    timeline = _Timeline(scenario)
    queue: deque[Arrival] = deque()
    # Scenario truth (the scheduler learns it through its inputs).
    limit_true = grid.base_limit_kw
    export_until: float | None = None

    served = waited = violations = 0
    wait_s_total = 0.0
    energy_kwh = cost = peak_energy = export_kwh = 0.0
    peak_kw = 0.0
    min_handover = math.inf
    samples: list[Sample] = []
    last_sample_s = -math.inf
    limit_latency_s = 0.0
    limit_pending_since: float | None = None
    alloc: Allocation | None = None
    next_progress = 0.0

    bidir = st.bidirectional and grid.bidirectional
    cache: dict[int, tuple[tuple[object, ...], SlotInput]] = {}

    def slot_inputs() -> list[SlotInput]:
        out: list[SlotInput] = []
        for i, s in enumerate(slots):
            key = (s.soc_pct, s.derate, s.faulted, s.docked_at_s)
            hit = cache.get(i)
            if hit is None or hit[0] != key:
                hit = (
                    key,
                    SlotInput(
                        slot_id=s.slot_id,
                        soc_pct=s.soc_pct,
                        bms_limit_kw=curve(s.soc_pct) if s.soc_pct is not None else 0.0,
                        charger_rating_kw=st.charger_rating_kw,
                        derate_factor=s.derate,
                        faulted=s.faulted,
                        docked_at_s=s.docked_at_s,
                        bidirectional=bidir,
                        capacity_kwh=cap_kwh,
                    ),
                )
                cache[i] = hit
            out.append(hit[1])
        return out

    def draw_kw(s: _Slot) -> float:
        """What the pack actually takes now (grid-side, + charge / - export)."""
        if s.soc_pct is None or s.faulted or s.power_kw == 0.0:
            return 0.0
        rated = st.charger_rating_kw * s.derate
        if s.power_kw > 0:
            if s.soc_pct >= max_soc - 1e-9:
                return 0.0
            return min(s.power_kw, curve(s.soc_pct), rated)
        if s.soc_pct <= grid.export_floor_soc_pct + 1e-9:
            return 0.0
        return max(s.power_kw, -rated)

    def ready_slot() -> _Slot | None:
        best: _Slot | None = None
        for s in slots:
            if (
                s.soc_pct is not None
                and not s.faulted
                and s.soc_pct >= ready_soc - 1e-9
                and (best is None or s.soc_pct > (best.soc_pct or 0.0))
            ):
                best = s
        return best

    def serve(now: float) -> bool:
        nonlocal served, wait_s_total, min_handover
        changed = False
        while queue:
            s = ready_slot()
            if s is None:
                break
            v = queue.popleft()
            min_handover = min(min_handover, s.soc_pct or 0.0)
            s.soc_pct = v.soc_pct
            s.docked_at_s = now
            s.power_kw = 0.0
            served += 1
            wait_s_total += now - v.t_s
            changed = True
        return changed

    def apply_event(kind: str, i: int, now: float) -> None:
        nonlocal limit_true, export_until, limit_pending_since
        e = scenario.events[i]
        start = kind == "start"
        if e.kind == "dispatch_limit":
            if start:
                assert e.power_kw is not None
                sched.set_power_limit(e.power_kw, e.end_s, now)
                limit_true = min(e.power_kw, grid.cap_kw)
                limit_pending_since = now
            else:
                limit_true = grid.base_limit_kw  # the lease itself expires in the scheduler
        elif e.kind == "export_request":
            if start:
                assert e.power_kw is not None
                sched.request_export(e.power_kw, e.end_s, now)
                export_until = e.end_s
            else:
                export_until = None
        elif e.kind == "derate":
            idx = range(st.slots) if e.slots in (None, "all") else e.slots
            assert not isinstance(idx, str)
            for j in idx:
                slots[j].derate = e.factor if start and e.factor is not None else 1.0
            sched.trigger("derate")
        else:  # fault
            assert e.slot is not None
            slots[e.slot].faulted = start
            if start:
                slots[e.slot].power_kw = 0.0
            sched.trigger("fault" if start else "fault_cleared")

    t = 0.0
    while t < DAY_S:
        changed = False
        while timeline.edges and timeline.edges[0][0] <= t + 1e-9:
            _, _, kind, i = timeline.edges.popleft()
            apply_event(kind, i, t)
        while arrivals and arrivals[0].t_s <= t + 1e-9:
            v = arrivals.popleft()
            sched.observe_arrival(Instant(t, t), v.soc_pct)
            if not queue and ready_slot() is not None:
                queue.append(v)
            else:
                waited += 1
                queue.append(v)
            changed = True
        if serve(t):
            changed = True
        if changed:
            sched.set_queue(len(queue))
            sched.trigger("pack_docked")
        if sched.needs_reallocation(t):
            alloc = sched.allocate(Instant(t, t), slot_inputs())
            for s, g in zip(slots, alloc.grants, strict=True):
                s.power_kw = g.power_kw
            if limit_pending_since is not None:
                limit_latency_s = max(limit_latency_s, t - limit_pending_since)
                limit_pending_since = None
        draws = [draw_kw(s) for s in slots]
        grid_kw = sum(draws)
        if grid_kw > limit_true + _VIOLATION_KW:
            violations += 1
        peak_kw = max(peak_kw, grid_kw)
        # The next moment anything happens.
        t_next = min(
            DAY_S,
            max(t + 1e-6, sched.next_due_s()),
            timeline.next_s(),
            arrivals[0].t_s if arrivals else math.inf,
            t + tariff.next_change_s(t),
        )
        if export_until is not None:
            t_next = min(t_next, export_until)
        if queue:
            for s, p in zip(slots, draws, strict=True):
                if p > 0 and s.soc_pct is not None and s.soc_pct < ready_soc:
                    dt_ready = (ready_soc - s.soc_pct) / 100 * cap_kwh / (p * eff) * _HOUR_S
                    t_next = min(t_next, t + dt_ready + 1e-6)
        dt = t_next - t
        price = tariff.at(t).price_per_kwh
        step_kwh = 0.0
        for s, p in zip(slots, draws, strict=True):
            if p == 0.0 or s.soc_pct is None:
                continue
            e_grid = p * dt / _HOUR_S
            if p > 0:
                room = (max_soc - s.soc_pct) / 100 * cap_kwh / eff
                e_grid = min(e_grid, max(0.0, room))
                s.soc_pct = min(max_soc, s.soc_pct + e_grid * eff / cap_kwh * 100)
            else:
                room = (s.soc_pct - grid.export_floor_soc_pct) / 100 * cap_kwh * eff
                e_grid = max(e_grid, -max(0.0, room))
                s.soc_pct = max(grid.export_floor_soc_pct, s.soc_pct + e_grid / eff / cap_kwh * 100)
                export_kwh -= e_grid
            step_kwh += e_grid
        energy_kwh += step_kwh
        cost += step_kwh * price
        q = int(t // 900.0)
        quarter_kwh[q] = quarter_kwh.get(q, 0.0) + max(0.0, step_kwh)
        if tariff.is_peak(t):
            peak_energy += step_kwh
        if record and (t - last_sample_s >= 60.0 or t_next >= DAY_S):
            plan_kw = None
            if horizon_of is not None:
                horizon = horizon_of(t)
                plan_kw = horizon[0][1] if horizon else None
                if t >= next_plan_s and horizon:
                    plans.append((t, [(t + off, kw) for off, kw in horizon]))
                    next_plan_s = t + _HOUR_S
            samples.append(
                Sample(
                    t,
                    grid_kw,
                    limit_true,
                    price,
                    sum(1 for _ in filter(_ready(ready_soc), slots)),
                    plan_kw,
                )
            )
            last_sample_s = t
        if progress is not None and t >= next_progress:
            progress(t / DAY_S)
            next_progress = t + _HOUR_S
        t = t_next

    # Vehicles still waiting at midnight waited until then, unserved.
    for v in queue:
        wait_s_total += DAY_S - v.t_s
    # The day closes as it opened: energy missing to bring every pack back to max SOC is
    # bought at the cheapest (valley) price.
    closing_kwh = sum(
        max(0.0, max_soc - s.soc_pct) / 100 * cap_kwh / eff for s in slots if s.soc_pct is not None
    )
    energy_kwh += closing_kwh
    cost += closing_kwh * tariff.min_price
    demand_kw = max(quarter_kwh.values(), default=0.0) / 0.25
    dc = grid.tariff.demand_charge_per_kw_month
    if dc is not None:
        dc = grid.tariff.daily_demand_charge_per_kw
        cost += dc * demand_kw
    if progress is not None:
        progress(1.0)
    kpis: dict[str, object] = {
        "scenario": scenario.name,
        "policy": policy,
        "seed": seed,
        "swaps_requested": n_requested,
        "swaps_served": served,
        "swaps_waited": waited,
        "wait_minutes_total": _kpi_round(wait_s_total / 60),
        "energy_kwh": _kpi_round(energy_kwh),
        "energy_cost": _kpi_round(cost),
        "currency": tariff.currency,
        "peak_grid_kw": _kpi_round(peak_kw),
        "peak_period_energy_kwh": _kpi_round(peak_energy),
        "min_handover_soc_pct": _kpi_round(min_handover if served else 0.0),
        "cap_violations": violations,
        "closing_energy_kwh": _kpi_round(closing_kwh),
        "export_kwh": _kpi_round(export_kwh),
        "max_limit_latency_s": _kpi_round(limit_latency_s),
    }
    if dc is not None:
        kpis["demand_peak_kw"] = _kpi_round(demand_kw)
        kpis["demand_charge"] = _kpi_round(dc * demand_kw)
    stats = getattr(sched.policy, "stats", None)
    if callable(stats):
        kpis.update(stats())
    return DayResult(kpis, samples, plans)


def _ready(ready_soc: float) -> Callable[[_Slot], bool]:
    def f(s: _Slot) -> bool:
        return s.soc_pct is not None and not s.faulted and s.soc_pct >= ready_soc - 1e-9

    return f
