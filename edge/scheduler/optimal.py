"""`optimal`: a perfect-foresight LP relaxation of a simulated day, a true LOWER BOUND on the
energy cost of any schedule that serves every swap on arrival within the cap, the dispatch
limits and each pack's rate limits. It is not a schedule anyone can run (it knows every arrival
in advance and may count fractions of packs as ready); it tells how far a policy is from the
best conceivable. simulate-day only: scipy is imported here, inside the function, never by the
daemon's import path.

Why it is a relaxation (every real schedule maps to a feasible LP point of no higher cost):
  - each returned pack k is a job available from the start of the step it arrives in
    (earlier than in reality) with the SOC it arrived with;
  - per step, the energy into job k is at most its charger rating x the best derating of the
    step, and at most the concave hull of the charging curve at the SOC it had at the start of
    the step (the curve only falls as SOC rises, so this over-estimates what it can take);
  - a pack counts as a fraction z = energy / energy-to-ready of a ready pack; the ready packs
    ever made by the end of each step (initial ones plus sum z) must cover the swaps requested
    by then; any real schedule has z in {0, 1} meeting this;
  - the grid power of a step is at most the highest limit in force during the step;
  - the day closes as it opened: every swap takes out at least ready-SOC energy and brings in
    its arrival SOC, so (energy bought + closing energy) x efficiency >= sum over swaps of
    (ready - arrival SOC) x capacity; closing energy is priced at the cheapest (valley) price;
  - an initial pack handed out leaves with its initial SOC (the LP chooses how many are);
    returned packs are counted as handed out at exactly the ready SOC, and faults are
    ignored: both only lower the bound.
"""

from __future__ import annotations

import math
import time

from edge.scheduler.config import DAY_S, PackModel
from edge.scheduler.plan import concave_hull
from edge.scheduler.policies import _ChargeTimes
from edge.scheduler.scenario import Scenario
from edge.scheduler.simday import Arrival, DayResult, Sample, draw_arrivals
from edge.scheduler.tariff import Tariff


class OptimalError(RuntimeError):
    """The LP could not be solved (infeasible day or solver failure)."""


def _step_max(
    overrides: list[tuple[float, float, float]], base: float, t0: float, t1: float
) -> float:
    """Highest value in force during [t0, t1): `base`, or (start, end, value) overrides."""
    over = sorted((s, e, v) for s, e, v in overrides if s < t1 and e > t0)
    if not over:
        return base
    best = max(v for _, _, v in over)
    reach = t0
    for s, e, _ in over:
        if s > reach:
            break
        reach = max(reach, e)
    return best if reach >= t1 else max(base, best)


def _charge_hours(pack: PackModel, rated_kw: float) -> _ChargeTimes:
    return _ChargeTimes(pack, rated_kw)


def solve_day(
    scenario: Scenario,
    seed: int = 0,
    *,
    step_s: float = 600.0,
    record: bool = False,
    integer_ready_s: float | None = None,
) -> DayResult:
    """The LP bound. With `integer_ready_s`, the ready flags become binaries and HiGHS's MIP
    runs for that long: its dual bound (reported as the cost) is still a valid lower bound,
    and a tighter one, whether or not the MIP finishes (bench only: too slow for the CLI)."""
    import numpy as np
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    wall0 = time.perf_counter()
    st, grid = scenario.station, scenario.grid
    pack = st.pack
    if any(e.kind == "export_request" for e in scenario.events):
        raise OptimalError("the LP bound does not model export requests")
    tariff = Tariff(grid.tariff)
    arrivals: list[Arrival] = draw_arrivals(scenario, seed)
    cap_kwh, eff = pack.capacity_kwh, pack.charging_efficiency
    ready, top = grid.ready_soc_pct, grid.max_soc_pct
    n = int(math.ceil(DAY_S / step_s))
    dt_h = step_s / 3600.0
    starts = [i * step_s for i in range(n)]
    # Limits and derating in force per step (the most favourable value of the step).
    limits = [
        (e.start_s, e.end_s, min(e.power_kw or 0.0, grid.cap_kw))
        for e in scenario.events
        if e.kind == "dispatch_limit"
    ]
    derates = [(e.start_s, e.end_s, e.factor or 0.0) for e in scenario.events if e.kind == "derate"]
    lim_kw = [_step_max(limits, grid.base_limit_kw, s, s + step_s) for s in starts]
    der = [_step_max(derates, 1.0, s, s + step_s) for s in starts]
    # A derate event on some slots only leaves others at 1.0.
    if any(e.kind == "derate" and e.slots not in (None, "all") for e in scenario.events):
        der = [1.0] * n
    price = [tariff.at(s + step_s / 2).price_per_kwh for s in starts]
    peak = [tariff.is_peak(s + step_s / 2) for s in starts]
    hull = concave_hull(pack)

    # Variables: per job k and step t >= s_k: q (pack-side kWh in the step), c (cumulative),
    # z (ready fraction); then one closing-energy variable M (pack-side kWh).
    jobs = []
    nv = 0
    for a in arrivals:
        s_k = min(n - 1, int(a.t_s // step_s))
        m = n - s_k
        jobs.append((s_k, m, nv, a.soc_pct))
        nv += 3 * m
    m_var = nv
    init_var = nv + 1  # initial packs handed out over the day
    nv += 2
    dc = grid.tariff.daily_demand_charge_per_kw
    peak_var = -1
    if dc > 0:
        peak_var = nv  # billed demand, kW
        nv += 1
    cost = np.zeros(nv)
    lb = np.zeros(nv)
    ub = np.full(nv, np.inf)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    rhs: list[float] = []
    eq_rows: list[int] = []
    eq_cols: list[int] = []
    eq_vals: list[float] = []
    eq_rhs: list[float] = []
    r = 0
    er = 0
    grid_rows: list[list[int]] = [[] for _ in range(n)]  # (col) per step for the limit rows
    ready_rows: list[list[int]] = [
        [] for _ in range(n)
    ]  # (col, coef) per step for the ready-count rows
    e_min = 0.0
    times = _charge_hours(pack, st.charger_rating_kw * max(der))
    for (s_k, m, base, soc0), arr in zip(jobs, arrivals, strict=True):
        e_ready = max(0.0, (ready - soc0) / 100 * cap_kwh)
        # No pack is ready sooner than its full-rate charging time after it arrives.
        ready_from_s = arr.t_s + times.hours(soc0, ready) * 3600.0
        e_room = max(0.0, (top - soc0) / 100 * cap_kwh)
        e_min += e_ready
        for j in range(m):
            t = s_k + j
            q, c, z = base + j, base + m + j, base + 2 * m + j
            cost[q] = price[t] / eff
            ub[q] = st.charger_rating_kw * der[t] * eff * dt_h
            if j == 0:  # the pack is here only for the rest of its arrival step
                ub[q] *= max(0.0, min(1.0, (starts[t] + step_s - arr.t_s) / step_s))
            ub[c] = e_room
            ub[z] = 1.0 if starts[t] + step_s >= ready_from_s - 1e-6 else 0.0
            grid_rows[t].append(q)
            # c_t - c_{t-1} - q_t = 0
            eq_rows += [er, er]
            eq_cols += [c, q]
            eq_vals += [1.0, -1.0]
            if j > 0:
                eq_rows.append(er)
                eq_cols.append(c - 1)
                eq_vals.append(-1.0)
            eq_rhs.append(0.0)
            er += 1
            # taper at the start-of-step SOC: q <= eff*dt*(a + b*(soc0 + 100*c_{t-1}/cap))
            for ln in hull:
                if ln.b >= 0:
                    continue  # rising or flat parts: covered by the rating bound or looser
                rows.append(r)
                cols.append(q)
                vals.append(1.0)
                if j > 0:
                    rows.append(r)
                    cols.append(c - 1)
                    vals.append(-eff * dt_h * ln.b * 100 / cap_kwh)
                rhs.append(eff * dt_h * (ln.a + ln.b * soc0))
                r += 1
            # z * e_ready <= c
            if e_ready > 0:
                rows += [r, r]
                cols += [z, c]
                vals += [e_ready, -1.0]
                rhs.append(0.0)
                r += 1
            ready_rows[t].append(z)
    n_init_ready = st.packs if st.initial_soc_pct >= ready else 0
    ub[init_var] = n_init_ready
    requested = [0] * n
    for a in arrivals:
        requested[min(n - 1, int(a.t_s // step_s))] += 1
    cum = 0
    for t in range(n):
        cum += requested[t]
        # -(sum z) - n_I <= -N_t: ready packs made (returned ones, plus the initial ones that
        # get handed out at all) cover the swaps so far.
        for z in ready_rows[t]:
            rows.append(r)
            cols.append(z)
            vals.append(-1.0)
        rows.append(r)
        cols.append(init_var)
        vals.append(-1.0)
        rhs.append(-cum)
        r += 1
        for q in grid_rows[t]:
            rows.append(r)
            cols.append(q)
            vals.append(1.0)
        rhs.append(lim_kw[t] * eff * dt_h)
        r += 1
    # Closing: sum q + M >= e_min + n_I x (initial - ready) x cap: an initial pack leaves with
    # its initial SOC (no export), and the closing also brings the stock from the initial SOC
    # up to the max.
    e_min += st.packs * max(0.0, top - st.initial_soc_pct) / 100 * cap_kwh
    for _s_k, m, base, _ in jobs:
        for j in range(m):
            rows.append(r)
            cols.append(base + j)
            vals.append(-1.0)
    rows.append(r)
    cols.append(m_var)
    vals.append(-1.0)
    if n_init_ready:
        rows.append(r)
        cols.append(init_var)
        vals.append(max(0.0, st.initial_soc_pct - ready) / 100 * cap_kwh)
    rhs.append(-e_min)
    r += 1
    cost[m_var] = tariff.min_price / eff
    if peak_var >= 0:
        # Billing demand is the highest quarter-hour mean; the mean over any aligned 30-min
        # block of steps never exceeds it, so P >= every block mean keeps the bound valid.
        cost[peak_var] = dc
        block = max(1, int(round(1800.0 / step_s)))
        for b0 in range(0, n - block + 1, block):
            for t in range(b0, b0 + block):
                for q in grid_rows[t]:
                    rows.append(r)
                    cols.append(q)
                    vals.append(1.0 / eff / (block * dt_h))
            rows.append(r)
            cols.append(peak_var)
            vals.append(-1.0)
            rhs.append(0.0)
            r += 1
    a_ub = coo_matrix((vals, (rows, cols)), shape=(r, nv)).tocsr()
    a_eq = coo_matrix((eq_vals, (eq_rows, eq_cols)), shape=(er, nv)).tocsr()
    extra: dict[str, object] = {}
    if integer_ready_s is None:
        res = linprog(
            cost,
            A_ub=a_ub,
            b_ub=np.array(rhs),
            A_eq=a_eq,
            b_eq=np.array(eq_rhs),
            bounds=np.column_stack([lb, ub]),
            method="highs",
        )
        if res.status != 0:
            raise OptimalError(f"LP not solved: {res.message}")
        bound = float(res.fun)
    else:
        from scipy.optimize import Bounds, LinearConstraint, milp

        integrality = np.zeros(nv)
        for zs in ready_rows:
            integrality[zs] = 1
        res = milp(
            cost,
            integrality=integrality,
            bounds=Bounds(lb, ub),
            constraints=[
                LinearConstraint(a_ub, -np.inf, np.array(rhs)),
                LinearConstraint(a_eq, np.array(eq_rhs), np.array(eq_rhs)),
            ],
            options={"time_limit": integer_ready_s, "disp": False},
        )
        if res.x is None:
            # No whole-pack schedule within the time limit: the LP's KPIs, and the better of
            # the two bounds.
            lp = solve_day(scenario, seed, step_s=step_s, record=record)
            mip_bound = getattr(res, "mip_dual_bound", None)
            lp_cost = float(lp.kpis["energy_cost"])  # type: ignore[arg-type]
            best = lp_cost if mip_bound is None else max(lp_cost, float(mip_bound))
            lp.kpis.update(
                policy="optimal",
                bound_cost=round(best, 3),
                gap_pct=None,
                mip_solve_limit_s=integer_ready_s,
                best_schedule=f"none within the time limit ({res.message}); LP KPIs",
            )
            return lp
        bound = float(res.mip_dual_bound)
        primal = float(res.fun)
        extra = {
            "bound_cost": round(bound, 3),
            "gap_pct": round(max(0.0, primal - bound) / max(1e-9, abs(primal)) * 100, 2),
            "mip_solve_limit_s": integer_ready_s,
        }
        bound = primal  # the KPIs are the best whole-pack schedule's
    x = res.x
    step_kwh = [0.0] * n  # grid-side
    for s_k, m, base, _ in jobs:
        for j in range(m):
            step_kwh[s_k + j] += float(x[base + j]) / eff
    closing = float(x[m_var]) / eff
    energy = sum(step_kwh) + closing
    kpis: dict[str, object] = {
        "scenario": scenario.name,
        "policy": "optimal-lp" if integer_ready_s is None else "optimal",
        "seed": seed,
        "swaps_requested": len(arrivals),
        "swaps_served": len(arrivals),
        "swaps_waited": 0,
        "wait_minutes_total": 0.0,
        "energy_kwh": round(energy, 3),
        "energy_cost": round(bound, 3),
        "currency": tariff.currency,
        "peak_grid_kw": round(max(step_kwh) / dt_h, 3),
        "peak_period_energy_kwh": round(
            sum(k for k, p in zip(step_kwh, peak, strict=True) if p), 3
        ),
        "min_handover_soc_pct": ready,
        "cap_violations": 0,
        "closing_energy_kwh": round(closing, 3),
        "export_kwh": 0.0,
        "max_limit_latency_s": 0.0,
        "lower_bound": integer_ready_s is None,
        "lp_step_s": step_s,
        "lp_variables": nv,
        "lp_solve_s": round(time.perf_counter() - wall0, 2),
        **extra,
    }
    if integer_ready_s is None:
        kpis["bound_cost"] = kpis["energy_cost"]
    if peak_var >= 0:
        kpis["demand_peak_kw"] = round(float(x[peak_var]), 3)
        kpis["demand_charge"] = round(dc * float(x[peak_var]), 3)
    samples: list[Sample] = []
    if record:
        # The "ready packs" curve of an LP is its slack in the ready-count rows (fractional).
        cum_req = 0
        for t in range(n):
            cum_req += requested[t]
            made = n_init_ready + sum(float(x[zc]) for zc in ready_rows[t])
            samples.append(
                Sample(
                    starts[t], step_kwh[t] / dt_h, lim_kw[t], price[t], int(round(made - cum_req))
                )
            )
    return DayResult(kpis, samples)
