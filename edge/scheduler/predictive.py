"""`predictive`: rolling-horizon optimisation (model predictive control) of the charging.

Every `replan_s` of station time, and at once on a trigger (pack docked or removed, fault, new
dispatch limit, arrivals far from the forecast; debounced to one replan per `debounce_s` except
faults and limits), the policy turns the station as it is into a `PlanRequest` (the rack's packs
with their SOC, rating and derating; the forecast's swaps, corrected by arrivals seen, matched
in time order to the packs from the fullest, then to the packs the forecast vehicles will bring;
the tariff, the active limit and its end, the demand charge, the reserve; `reserve.buffer_packs` more
packs are due now, so each swap's pack is ready a few swaps early: arrivals bunch around the
mean forecast) and hands it to a
`Planner`. The planner solves the LP of `edge.scheduler.mpc` (HiGHS) inline (simulate-day,
tests) or in the solver process the scheduler service owns (the daemon: `solver.py`); this
module never imports numpy.

Between replans each planned pack is granted the power that brings it to its planned SOC at the
end of the current step; the core clamps every grant as for any policy. A plan is applied only
while fresh (`max_age_s`); a solve that fails or runs out of time, or no fresh plan, falls back
to `smart` for that replan, with a counted reason (`fallbacks`) and one log line per reason
change.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.core.log import get_logger
from edge.scheduler.config import DAY_S
from edge.scheduler.core import Decision, PolicyContext, SlotInput, is_ready
from edge.scheduler.plan import Plan, PlanPack, PlanRequest, concave_hull
from edge.scheduler.policies import SmartPolicy

log = get_logger("scheduler.predictive")

_HOUR_S = 3600.0
# Triggers that replan at once, whatever the debounce.
_URGENT = ("fault", "dispatch_limit", "start")
# Triggers that are not news about the station (the planner's own answer, the queue's length
# is in every request anyway).
_QUIET = ("period", "plan_ready")


class Planner(Protocol):
    """Solves `PlanRequest`s: `submit` never blocks the caller's loop for long; `poll` returns
    the newest finished `Plan` once, or None."""

    def submit(self, req: PlanRequest) -> None: ...

    def poll(self) -> Plan | None: ...


class InlinePlanner:
    """Solves in the caller's thread (simulate-day, benches, tests). numpy/highspy load on the
    first solve. `solve` can be injected (tests: failures, timeouts)."""

    def __init__(self, solve: Callable[[PlanRequest], Plan] | None = None) -> None:
        self._solve = solve
        self._done: Plan | None = None
        self.solve_s: list[float] = []

    def submit(self, req: PlanRequest) -> None:
        solve = self._solve
        if solve is None:
            from edge.scheduler.mpc import solve as mpc_solve

            solve = self._solve = mpc_solve
        try:
            plan = solve(req)
        except Exception as e:  # noqa: BLE001 - a solver bug falls back to smart, counted
            plan = Plan.failed(req, f"error: {e!r}")
        self.solve_s.append(plan.solve_s)
        self._done = plan

    def poll(self) -> Plan | None:
        done, self._done = self._done, None
        return done


@dataclass(frozen=True, slots=True)
class _Planned:
    """A rack pack as it was when the plan was asked for (a swap makes the plan's line stale)."""

    docked_at_s: float


class PredictivePolicy:
    name = "predictive"

    def __init__(
        self,
        planner: Planner | None = None,
        *,
        step_s: float = 900.0,
        horizon_s: float = 12 * _HOUR_S,
        replan_s: float = 300.0,
        debounce_s: float = 30.0,
        max_age_s: float = 900.0,
        time_limit_s: float = 2.0,
        forecast_drift: float = 0.25,
        lead_s: float = 0.0,
        reserve_guard: bool = True,
        ready_margin_pct: float = 0.5,
        buffer_packs: int | None = None,
    ) -> None:
        self.planner: Planner = planner if planner is not None else InlinePlanner()
        self.step_s = step_s
        self.horizon_s = horizon_s
        self.replan_s = replan_s
        self.debounce_s = debounce_s
        self.max_age_s = max_age_s
        self.time_limit_s = time_limit_s
        self.forecast_drift = forecast_drift
        self.lead_s = lead_s
        self.reserve_guard = reserve_guard
        self.ready_margin_pct = ready_margin_pct
        self.buffer_packs = buffer_packs
        self.smart = SmartPolicy()
        self.plan: Plan | None = None
        self._planned: dict[str, _Planned] = {}
        self._asked: dict[int, dict[str, _Planned]] = {}
        self._seq = 0
        self._last_replan_s: float | None = None
        self._pending: list[str] = []
        self._plan_factor = 1.0
        self._fallback_reason = ""
        self.replans = 0
        self.solved = 0
        self.fallbacks: Counter[str] = Counter()

    # -- replanning -------------------------------------------------------------------------

    def _due(self, ctx: PolicyContext) -> str | None:
        now = ctx.now.t_s
        news = [t for t in ctx.trigger.split(",") if t and t not in _QUIET]
        self._pending.extend(news)
        last = self._last_replan_s
        if last is None:
            return "start"
        if any(t.startswith(_URGENT) for t in news):
            return ",".join(news)
        if abs(ctx.forecast_factor - self._plan_factor) > self.forecast_drift * self._plan_factor:
            self._pending.append("forecast_drift")
        since = now - last
        if self._pending and since >= self.debounce_s - 1e-6:
            return ",".join(dict.fromkeys(self._pending))
        if since >= self.replan_s - 1e-6:
            return "period"
        return None

    def _steps(self, ctx: PolicyContext) -> tuple[list[float], float]:
        """Step lengths (ending on the `step_s` grid of the local day) and the horizon: at least
        `horizon_s`, and past the end of the next peak period (at most 24 h)."""
        day = ctx.now.day_s
        horizon = self.horizon_s
        tariff = ctx.tariff
        # Walk the tariff forward: find the first peak segment, then its end.
        off, in_peak, seen_peak = 0.0, tariff.is_peak(day), False
        while off < DAY_S:
            if tariff.is_peak(day + off):
                seen_peak = True
            elif seen_peak:
                break
            off += tariff.next_change_s(day + off)
            in_peak = tariff.is_peak(day + off)
        del in_peak
        if seen_peak:
            horizon = min(DAY_S, max(horizon, off))
        steps: list[float] = []
        first = (math.floor(day / self.step_s) + 1) * self.step_s - day
        if first < 60.0:
            first += self.step_s
        acc = 0.0
        nxt = first
        while acc < horizon - 1e-6:
            ln = min(nxt, horizon - acc)
            steps.append(ln)
            acc += ln
            nxt = self.step_s
        return steps, horizon

    def _request(self, ctx: PolicyContext) -> tuple[PlanRequest, dict[str, _Planned]]:
        cfg = ctx.config
        steps, horizon = self._steps(ctx)
        day = ctx.now.day_s
        price: list[float] = []
        limit: list[float] = []
        lease_end = None if ctx.limit_until_s is None else ctx.limit_until_s - ctx.now.t_s
        acc = 0.0
        for ln in steps:
            price.append(ctx.tariff.at(day + acc + ln / 2).price_per_kwh)
            # A step that overlaps the lease gets the lease's limit: never plan over it.
            limit.append(
                ctx.limit_kw if lease_end is None or lease_end > acc else ctx.base_limit_kw
            )
            acc += ln
        avail = [s for s in ctx.slots if s.available and s.soc_pct is not None]
        avail.sort(key=lambda s: (-(s.soc_pct or 0.0), s.slot_id))
        rated = [_rated(s) for s in avail]
        mean_rated = sum(rated) / len(rated) if rated else 0.0
        arrivals = ctx.forecast.arrival_times(day, horizon, ctx.forecast_factor)
        buffer = cfg.reserve.buffer_packs if self.buffer_packs is None else self.buffer_packs
        deadlines = [0.0] * (ctx.queue + cfg.reserve.margin_packs + buffer)
        deadlines += [max(0.0, a - self.lead_s) for a in arrivals]
        packs: list[PlanPack] = []
        planned: dict[str, _Planned] = {}
        arr_soc = ctx.forecast.arrival_soc_pct
        future = [0.0] * ctx.queue + arrivals
        for i, s in enumerate(avail):
            dl = deadlines[i] if i < len(deadlines) else None
            packs.append(PlanPack(s.slot_id, s.soc_pct or 0.0, _rated(s), 0.0, dl))
            planned[s.slot_id] = _Planned(s.docked_at_s)
        for j, a in enumerate(future):
            i = len(avail) + j
            dl = deadlines[i] if i < len(deadlines) else None
            if dl is None:
                break  # later packs have no swap inside the horizon: nothing to plan for them
            packs.append(PlanPack(f"f{j}", arr_soc, mean_rated, a, dl))
        self._seq += 1
        req = PlanRequest(
            seq=self._seq,
            t0_s=ctx.now.t_s,
            day_s=day,
            steps_s=tuple(steps),
            price=tuple(price),
            limit_kw=tuple(limit),
            packs=tuple(packs),
            capacity_kwh=cfg.pack.capacity_kwh,
            efficiency=cfg.pack.charging_efficiency,
            # A hair above the hand-over SOC: a plan met to the second still makes a wait.
            ready_soc_pct=min(cfg.max_soc_pct, cfg.ready_soc_pct + self.ready_margin_pct),
            max_soc_pct=cfg.max_soc_pct,
            hull=tuple(concave_hull(cfg.pack)),
            # A hair above the cheapest price: packs top up at the cheapest price, as smart does.
            terminal_price=ctx.tariff.min_price + 1e-3,
            demand_charge_per_kw=cfg.tariff.daily_demand_charge_per_kw,
            demand_floor_kw=ctx.demand_peak_kw,
            time_limit_s=self.time_limit_s,
        )
        return req, planned

    def _collect(self) -> None:
        while (done := self.planner.poll()) is not None:
            planned = self._asked.pop(done.seq, None)
            if done.seq != self._seq or planned is None:
                continue  # an answer to an older question: a newer one is on its way
            if done.ok:
                self.solved += 1
                self.plan = done
                self._planned = planned
                if self._fallback_reason:
                    log.info("planning again", after=self._fallback_reason)
                self._fallback_reason = ""
            else:
                self.plan = None
                self._fallback(done.reason)

    def _fallback(self, reason: str) -> None:
        key = reason.split(":")[0]
        self.fallbacks[key] += 1
        if key != self._fallback_reason:
            log.warning(
                "plan failed, falling back to smart", reason=reason, count=self.fallbacks[key]
            )
        self._fallback_reason = key

    # -- decision ---------------------------------------------------------------------------

    def decide(self, ctx: PolicyContext) -> Decision:
        self._collect()
        why = self._due(ctx)
        if why is not None:
            req, planned = self._request(ctx)
            self._asked = {req.seq: planned}
            self._last_replan_s = ctx.now.t_s
            self._plan_factor = ctx.forecast_factor
            self._pending.clear()
            self.replans += 1
            self.planner.submit(req)
            self._collect()
        if ctx.export_request_kw > 0:
            # The plan does not price exports: smart serves the request from surplus packs.
            d = self.smart.decide(ctx)
            return Decision(d.power_kw, f"export (smart): {d.reason}")
        plan = self.plan
        if plan is not None and ctx.now.t_s - plan.t0_s > self.max_age_s:
            self.plan = plan = None
            self._fallback("stale")
        if plan is None:
            d = self.smart.decide(ctx)
            reason = self._fallback_reason or "waiting for a plan"
            return Decision(d.power_kw, f"fallback to smart ({reason}): {d.reason}")
        return self._follow(ctx, plan)

    def _follow(self, ctx: PolicyContext, plan: Plan) -> Decision:
        cfg = ctx.config
        elapsed = ctx.now.t_s - plan.t0_s
        i = next((k for k, e in enumerate(plan.ends_s) if e > elapsed + 1e-6), None)
        if i is None:
            d = self.smart.decide(ctx)
            return Decision(d.power_kw, f"fallback to smart (plan ended): {d.reason}")
        left_h = max(1e-6, (plan.ends_s[i] - elapsed) / _HOUR_S)
        eff = cfg.pack.charging_efficiency
        cap = cfg.pack.capacity_kwh
        out: dict[str, float] = {}
        left = ctx.limit_kw
        # The reserve as feedback (as smart keeps it): while ready packs are fewer than the
        # swaps expected within the reserve horizon + margin + vehicles waiting, the packs
        # closest to ready charge at full power whatever the plan. The plan covers the mean
        # forecast; this covers arrivals bunching up.
        deficit = ctx.reserve_packs - ctx.ready_packs if self.reserve_guard else ctx.queue
        if deficit > 0:
            nonready = sorted(
                (s for s in ctx.slots if s.available and not is_ready(s, cfg.ready_soc_pct)),
                key=lambda s: (-(s.soc_pct or 0.0), s.slot_id),
            )
            for s in nonready[:deficit]:
                p = min(s.charge_limit_kw, left)
                if p > 0:
                    out[s.slot_id] = p
                    left -= p
        planned_kw = 0.0
        for s in ctx.slots:
            if s.slot_id in out or not s.available or s.soc_pct is None:
                continue
            traj = plan.soc_pct.get(s.slot_id)
            who = self._planned.get(s.slot_id)
            if traj is None or who is None or who.docked_at_s != s.docked_at_s:
                continue  # docked since the plan: the next replan (due) covers it
            target = traj[i]
            if target <= s.soc_pct + 1e-6:
                continue
            p = (target - s.soc_pct) / 100 * cap / eff / left_h
            p = min(p, s.charge_limit_kw)
            if p > 1e-6:
                out[s.slot_id] = p
                planned_kw += p
        dc = cfg.tariff.daily_demand_charge_per_kw
        allowed = max(plan.grid_kw[i], ctx.demand_peak_kw) + 1.0
        if dc > 0 and ctx.queue == 0 and planned_kw > allowed:
            # Catching up must not set a new billed peak the plan did not choose.
            f = allowed / planned_kw
            out = {k: v * f for k, v in out.items()}
        horizon_h = plan.ends_s[-1] / _HOUR_S
        total = sum(out.values())
        reason = f"plan {plan.grid_kw[i]:.0f} kW this step ({horizon_h:.1f} h horizon)"
        if deficit > 0:
            reason = (
                f"reserve short: {ctx.ready_packs} ready of {ctx.reserve_packs} needed; " + reason
            )
        if total <= 1e-6:
            reason = "holding for cheaper power; " + reason
        return Decision(out, reason)

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "replans": self.replans,
            "plans_solved": self.solved,
            "fallbacks": sum(self.fallbacks.values()),
            "fallback_reasons": dict(self.fallbacks),
        }
        times = getattr(self.planner, "solve_s", None)
        if times:
            ms = sorted(x * 1000 for x in times)
            out["solve_ms_mean"] = round(sum(ms) / len(ms), 1)
            out["solve_ms_p99"] = round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1)
        return out

    # -- for telemetry ----------------------------------------------------------------------

    def horizon_kw(self, now_t_s: float) -> list[tuple[float, float]]:
        """The current plan from now: (seconds from now to the step's end, planned grid kW)."""
        plan = self.plan
        if plan is None:
            return []
        elapsed = now_t_s - plan.t0_s
        return [
            (round(e - elapsed, 1), round(kw, 1))
            for e, kw in zip(plan.ends_s, plan.grid_kw, strict=True)
            if e > elapsed + 1e-6
        ]


def _rated(s: SlotInput) -> float:
    return s.charger_rating_kw * min(1.0, max(0.0, s.derate_factor))
