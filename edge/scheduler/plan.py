"""What the predictive policy asks its solver and what comes back: plain data, no numpy.

A `PlanRequest` is the rolling-horizon problem at one instant (steps, prices, limits, the packs
in the rack and the ones the forecast vehicles will bring, each with the deadline of the swap
it is matched to); a `Plan` is the solver's answer (planned grid power per step, each rack
pack's SOC at each step end). Both cross a process boundary as JSON (`to_json`/`from_json`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.scheduler.config import PackModel


@dataclass(frozen=True, slots=True)
class HullLine:
    """power_kw <= a + b * soc_pct (one segment of the charging curve's concave hull)."""

    a: float
    b: float


def concave_hull(pack: PackModel) -> list[HullLine]:
    """The upper concave hull of the charging curve as lines; the LP's rate bound."""
    pts = [(p.soc_pct, p.power_kw) for p in pack.charging_curve]
    if pts[0][0] > 0:
        pts.insert(0, (0.0, pts[0][1]))
    if pts[-1][0] < 100:
        pts.append((100.0, pts[-1][1]))
    hull: list[tuple[float, float]] = []
    for p in pts:  # upper hull, monotone chain
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    lines = []
    for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
        b = (y2 - y1) / (x2 - x1)
        lines.append(HullLine(y1 - b * x1, b))
    return lines


@dataclass(frozen=True, slots=True)
class PlanPack:
    """One pack of the plan: in the rack now (`key` = slot id) or brought by a forecast
    vehicle (`key` = "f<n>", docked from `from_s`)."""

    key: str
    soc_pct: float
    rated_kw: float  # grid-side: charger rating x derating
    from_s: float = 0.0  # offset from the plan's start when it is docked
    deadline_s: float | None = None  # offset when it must be ready; None: no swap in horizon


@dataclass(frozen=True, slots=True)
class PlanRequest:
    seq: int
    t0_s: float  # station monotonic time the plan starts
    day_s: float
    steps_s: tuple[float, ...]  # step lengths (the first may be short: steps end on the grid)
    price: tuple[float, ...]  # per kWh, per step
    limit_kw: tuple[float, ...]  # station import limit per step
    packs: tuple[PlanPack, ...]
    capacity_kwh: float
    efficiency: float
    ready_soc_pct: float
    max_soc_pct: float
    hull: tuple[HullLine, ...]
    terminal_price: float  # value per grid kWh of energy stored at the horizon's end
    demand_charge_per_kw: float = 0.0
    demand_floor_kw: float = 0.0  # the peak already billed this month
    shortfall_penalty: float = 20.0  # per pack-side kWh missing at a deadline
    # Per grid kWh and hour from the plan's start: among equal prices the plan charges
    # early (a just-in-time plan has no room for arrivals bunching or a derating). The
    # terminal value gets the horizon's whole ramp on top, so storing stays worth it.
    early_per_kwh_h: float = 1e-4
    time_limit_s: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PlanRequest:
        d: dict[str, Any] = json.loads(text)
        d["steps_s"] = tuple(d["steps_s"])
        d["price"] = tuple(d["price"])
        d["limit_kw"] = tuple(d["limit_kw"])
        d["packs"] = tuple(PlanPack(**p) for p in d["packs"])
        d["hull"] = tuple(HullLine(**h) for h in d["hull"])
        return cls(**d)

    @property
    def ends_s(self) -> tuple[float, ...]:
        out: list[float] = []
        acc = 0.0
        for s in self.steps_s:
            acc += s
            out.append(acc)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Plan:
    seq: int
    t0_s: float
    ok: bool
    reason: str = ""  # why it failed: "timeout", "infeasible", "error: ...", "solver_died"
    solve_s: float = 0.0
    ends_s: tuple[float, ...] = ()  # step end offsets from t0_s
    grid_kw: tuple[float, ...] = ()  # planned station power per step
    soc_pct: dict[str, tuple[float, ...]] = field(default_factory=dict)  # rack packs, step ends
    short_kwh: float = 0.0
    cost: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d: dict[str, Any] = json.loads(text)
        d["ends_s"] = tuple(d["ends_s"])
        d["grid_kw"] = tuple(d["grid_kw"])
        d["soc_pct"] = {k: tuple(v) for k, v in d["soc_pct"].items()}
        return cls(**d)

    @classmethod
    def failed(cls, req: PlanRequest, reason: str, solve_s: float = 0.0) -> Plan:
        return cls(req.seq, req.t0_s, False, reason, solve_s)
