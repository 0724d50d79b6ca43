"""The predictive policy's optimisation: one LP per replan, solved with HiGHS (highspy).

Imports numpy and highspy: only the solver process (`edge.scheduler.solver`), simulate-day and
the bench load this module, never the daemon's event loop.

Per pack k (in the rack, or brought by a forecast vehicle from its arrival) and step t:
  q[k,t]  pack-side kWh charged in step t, 0 <= q <= rating x eff x dt (x the docked part)
  c[k,t]  cumulative kWh since the plan's start, c[k,t] = c[k,t-1] + q[k,t], c <= room to max
  taper:  q[k,t] <= eff x dt x (a + b x SOC at the end of step t) for each falling line of the
          charging curve's concave hull (SOC is linear in c[k,t]): what the plan asks, a pack
          can take (the start-of-step SOC would promise more than the taper gives)
  swap:   c by the deadline of the swap the pack is matched to (interpolated inside the step)
          + short[k] >= energy to the ready SOC; short is penalised (never infeasible)
  grid:   sum_k q[k,t] / eff <= limit[t] x dt;  with a demand charge also <= P x dt
Objective: energy cost (+ a tiny ramp in time: among equal prices, earlier) - terminal value of stored energy + demand charge x P + penalty x short,
with P >= the peak already billed (so only a new peak costs).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from edge.scheduler.plan import Plan, PlanRequest

_INF = math.inf


_BANNER_SHOWN = False


def _quiet_highs(highspy: Any) -> Any:
    """A Highs instance without output. Its first construction in a process prints a banner on
    fd 1 (C++ stdout), which would land in simulate-day's JSON output or the solver process's
    protocol: send that one to stderr."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _BANNER_SHOWN = True
    h.setOptionValue("output_flag", False)
    return h


def solve(req: PlanRequest) -> Plan:
    import highspy
    import numpy as np

    wall0 = time.perf_counter()
    n_t = len(req.steps_s)
    if n_t == 0:
        return Plan.failed(req, "empty horizon")
    eff = req.efficiency
    cap = req.capacity_kwh
    dt_h = [s / 3600.0 for s in req.steps_s]
    ends = req.ends_s
    starts = [e - s for e, s in zip(ends, req.steps_s, strict=True)]
    falling = [ln for ln in req.hull if ln.b < 0]

    cost: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    # Row-wise triplets, converted to CSC for HiGHS at the end.
    r_idx: list[int] = []
    c_idx: list[int] = []
    vals: list[float] = []
    r_lo: list[float] = []
    r_hi: list[float] = []

    def var(c: float, lb: float, ub: float) -> int:
        cost.append(c)
        lo.append(lb)
        hi.append(ub)
        return len(cost) - 1

    def row(entries: list[tuple[int, float]], lb: float, ub: float) -> None:
        r = len(r_lo)
        for j, v in entries:
            r_idx.append(r)
            c_idx.append(j)
            vals.append(v)
        r_lo.append(lb)
        r_hi.append(ub)

    grid_cols: list[list[int]] = [[] for _ in range(n_t)]
    rack: dict[str, tuple[float, list[int]]] = {}  # key -> (soc0, c columns)
    short_cols: list[int] = []
    # Earliest deadline first among equal prices: the ramp's weight grows with urgency, so
    # under a binding limit the plan finishes one pack after another instead of spreading
    # power over all of them (a derating or a bunch of arrivals then finds packs ready).
    by_deadline = sorted(
        (p.deadline_s for p in req.packs if p.deadline_s is not None),
    )
    n_dl = max(1, len(by_deadline))
    top_price, low_price = max(req.price), min(req.price)
    dear = [pr >= top_price - 1e-9 and top_price > low_price + 1e-9 for pr in req.price]
    # End of the run of dearest steps each step belongs to.
    dear_end = [0.0] * n_t
    for t in range(n_t - 1, -1, -1):
        dear_end[t] = dear_end[t + 1] if t + 1 < n_t and dear[t + 1] else ends[t]
    horizon_h = ends[-1] / 3600.0
    for p in req.packs:
        if p.deadline_s is None:
            weight = 1.0
        else:
            weight = 2.0 - by_deadline.index(p.deadline_s) / n_dl
        room = max(0.0, (req.max_soc_pct - p.soc_pct) / 100 * cap)
        first = 0
        while first < n_t and ends[first] <= p.from_s + 1e-6:
            first += 1
        if first >= n_t:
            continue
        q_cols: list[int] = []
        c_cols: list[int] = []
        for t in range(first, n_t):
            docked = 1.0
            if t == first and p.from_s > starts[t]:
                docked = max(0.0, (ends[t] - p.from_s) / req.steps_s[t])
            mid_h = (starts[t] + ends[t]) / 2 / 3600.0
            if dear[t] and (p.deadline_s is None or p.deadline_s > dear_end[t]):
                # At the dearest price, energy for a swap after this dear run as late as
                # possible: what the next replan finds it does not need (fewer arrivals than
                # the forecast, a pack arriving fuller) is never bought. For a swap inside
                # the run, the price is the same early or late, and early is safer.
                ramp = req.early_per_kwh_h * (horizon_h - mid_h)
            else:
                ramp = weight * req.early_per_kwh_h * mid_h
            q = var((req.price[t] + ramp) / eff, 0.0, max(0.0, p.rated_kw) * eff * dt_h[t] * docked)
            c = var(0.0, 0.0, room)
            # c_t - c_{t-1} - q_t = 0
            ent = [(c, 1.0), (q, -1.0)]
            if c_cols:
                ent.append((c_cols[-1], -1.0))
            row(ent, 0.0, 0.0)
            for ln in falling:
                # At the SOC of the step's END (the curve falls, so this never promises more
                # than the pack takes): q <= eff dt (a + b (soc0 + 100 (c_{t-1} + q) / cap))
                k = eff * dt_h[t] * ln.b * 100 / cap
                rhs = eff * dt_h[t] * (ln.a + ln.b * p.soc_pct)
                ent = [(q, 1.0 - k)]
                if c_cols:
                    ent.append((c_cols[-1], -k))
                row(ent, -_INF, rhs)
            q_cols.append(q)
            c_cols.append(c)
            grid_cols[t].append(q)
        # Energy stored at the end is worth the terminal price (the day closes as it opened).
        terminal = req.terminal_price + weight * req.early_per_kwh_h * ends[-1] / 3600.0
        cost[c_cols[-1]] -= terminal / eff
        need = max(0.0, (req.ready_soc_pct - p.soc_pct) / 100 * cap)
        if p.deadline_s is not None and need > 1e-9:
            d = max(p.deadline_s, ends[0])
            short = var(req.shortfall_penalty, 0.0, need)
            short_cols.append(short)
            ent = [(short, 1.0)]
            if d < ends[-1]:
                td = next(t for t in range(n_t) if ends[t] > d)
                frac = (d - starts[td]) / req.steps_s[td]
                if td - 1 >= first:
                    ent.append((c_cols[td - 1 - first], 1.0))
                if td >= first and frac > 1e-9:
                    ent.append((q_cols[td - first], frac))
            else:
                ent.append((c_cols[-1], 1.0))
            row(ent, need, _INF)
        if p.from_s <= 0.0 and first == 0:
            rack[p.key] = (p.soc_pct, c_cols)
    peak_col = -1
    if req.demand_charge_per_kw > 0:
        peak_col = var(req.demand_charge_per_kw, req.demand_floor_kw, _INF)
    for t in range(n_t):
        if not grid_cols[t]:
            continue
        ent = [(q, 1.0 / eff) for q in grid_cols[t]]
        row(ent, -_INF, max(0.0, req.limit_kw[t]) * dt_h[t])
        if peak_col >= 0:
            row([*ent, (peak_col, -dt_h[t])], -_INF, 0.0)

    n_col, n_row = len(cost), len(r_lo)
    lp = highspy.HighsLp()
    lp.num_col_ = n_col
    lp.num_row_ = n_row
    lp.col_cost_ = np.array(cost)
    lp.col_lower_ = np.array(lo)
    lp.col_upper_ = np.array(hi)
    lp.row_lower_ = np.array(r_lo)
    lp.row_upper_ = np.array(r_hi)
    ci = np.array(c_idx, dtype=np.int32)
    order = np.argsort(ci, kind="stable")
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.concatenate(([0], np.cumsum(np.bincount(ci, minlength=n_col)))).astype(
        np.int32
    )
    lp.a_matrix_.index_ = np.array(r_idx, dtype=np.int32)[order]
    lp.a_matrix_.value_ = np.array(vals)[order]
    h = _quiet_highs(highspy)
    h.setOptionValue("time_limit", float(req.time_limit_s))
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    solve_s = time.perf_counter() - wall0
    if status == highspy.HighsModelStatus.kTimeLimit:
        return Plan.failed(req, "timeout", solve_s)
    if status != highspy.HighsModelStatus.kOptimal:
        return Plan.failed(req, f"solver status {h.modelStatusToString(status)}", solve_s)
    x = np.asarray(h.getSolution().col_value)
    grid_kw = tuple(
        float(sum(x[q] for q in grid_cols[t]) / eff / dt_h[t]) if grid_cols[t] else 0.0
        for t in range(n_t)
    )
    socs = {
        k: tuple(min(req.max_soc_pct, soc0 + 100 * float(x[c]) / cap) for c in cols)
        for k, (soc0, cols) in rack.items()
    }
    short_kwh = float(sum(x[j] for j in short_cols))
    return Plan(
        seq=req.seq,
        t0_s=req.t0_s,
        ok=True,
        solve_s=solve_s,
        ends_s=ends,
        grid_kw=grid_kw,
        soc_pct=socs,
        short_kwh=short_kwh,
        cost=float(h.getInfo().objective_function_value),
    )
