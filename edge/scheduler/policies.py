"""Allocation policies: `naive` (everything at full power, first docked first served) and
`smart` (cost- and peak-aware, keeps the reserve). The `optimal` LP bound lives in
`edge.scheduler.optimal` and is a simulate-day tool, not a live policy (it needs the future).

Policies only propose; `Scheduler` clamps every proposal to the slot and station limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.scheduler.config import DAY_S, GridConfig, PackModel
from edge.scheduler.core import Decision, Policy, PolicyContext, SlotInput, is_ready

_HOUR_S = 3600.0


def _fmt_day(day_s: float) -> str:
    m = int(day_s % DAY_S) // 60
    return f"{m // 60:02d}:{m % 60:02d}"


class NaivePolicy:
    """Every docked pack below max SOC at full power at once; under the station limit the
    first docked is served first."""

    name = "naive"

    def decide(self, ctx: PolicyContext) -> Decision:
        left = ctx.limit_kw
        out: dict[str, float] = {}
        cands = [
            s
            for s in ctx.slots
            if s.available and s.soc_pct is not None and s.soc_pct < ctx.config.max_soc_pct
        ]
        cands.sort(key=lambda s: (s.docked_at_s, s.slot_id))
        for s in cands:
            p = min(s.charge_limit_kw, left)
            if p > 0:
                out[s.slot_id] = p
                left -= p
        if not cands:
            return Decision(out, "all packs full")
        return Decision(out, f"charging {len(out)} packs at full power")


class _ChargeTimes:
    """Hours to charge from one SOC to another at full rate, from a table built once per
    (pack model, charger rating): time(a -> b) = T(a) - T(b)."""

    __slots__ = ("_t", "_step")

    def __init__(self, pack: PackModel, rated_kw: float, step_pct: float = 0.5) -> None:
        self._step = step_pct
        n = int(round(100 / step_pct))
        t = [0.0] * (n + 1)
        kwh_pack = pack.capacity_kwh * step_pct / 100
        # T[i] = hours from soc i*step to 100 %; midpoint rule per step.
        for i in range(n - 1, -1, -1):
            soc = (i + 0.5) * step_pct
            p_grid = max(1e-3, min(pack.curve_kw(soc), rated_kw))
            t[i] = t[i + 1] + kwh_pack / (p_grid * pack.charging_efficiency)
        self._t = t

    def _at(self, soc: float) -> float:
        x = min(100.0, max(0.0, soc)) / self._step
        i = min(int(x), len(self._t) - 2)
        f = x - i
        return self._t[i] * (1 - f) + self._t[i + 1] * f

    def hours(self, soc_from: float, soc_to: float) -> float:
        return max(0.0, self._at(soc_from) - self._at(soc_to))


_TIMES: dict[tuple[int, float], tuple[PackModel, _ChargeTimes]] = {}


def _charge_times(pack: PackModel, rated_kw: float) -> _ChargeTimes:
    # Keyed by identity: pydantic models holding lists are not hashable.
    key = (id(pack), rated_kw)
    hit = _TIMES.get(key)
    if hit is None or hit[0] is not pack:
        if len(_TIMES) > 64:
            _TIMES.clear()
        hit = (pack, _ChargeTimes(pack, rated_kw))
        _TIMES[key] = hit
    return hit[1]


@dataclass(slots=True)
class _Supply:
    slot_id: str | None  # None: a pack that a forecast vehicle will bring
    soc_pct: float
    avail_off_s: float
    rated_kw: float


class SmartPolicy:
    """Plan-then-act. On each replan (new 15-min bucket, a trigger: pack docked or removed,
    fault, derating; a limit or queue change) it
      1. turns the forecast into demands: the k-th expected swap needs a ready pack when it is
         expected (`lead_s` earlier if set), queued vehicles and `reserve.margin_packs` now;
      2. matches demands in time order to supplies: ready packs, then charging packs by SOC,
         then the depleted packs the forecast vehicles will bring;
      3. gives each supply's energy (to `ready_soc_pct` + a small margin) to the cheapest
         buckets of its window (earliest first among equal prices) under the station limit
         (a dispatch lease counts until it ends) and the pack's own rate.
    Between replans each pack charges at full rate until it reaches this bucket's planned SOC.
    The reserve rule overrides the plan: while ready packs are fewer than the swaps expected
    within `reserve.horizon_s` plus `margin_packs` (plus queued vehicles), the packs closest
    to ready charge at full rate whatever the price. At the cheapest price of the day every
    pack is topped up to `max_soc_pct`; export requests are served only by packs outside the
    reserve.
    """

    name = "smart"

    def __init__(
        self,
        *,
        bucket_s: float = 900.0,
        horizon_s: float = 12 * _HOUR_S,
        ready_margin_pct: float = 0.1,
        lead_s: float = 0.0,
    ) -> None:
        self.bucket_s = bucket_s
        self.lead_s = lead_s
        self.horizon_s = horizon_s
        self.ready_margin_pct = ready_margin_pct
        self._key: tuple[object, ...] | None = None
        self._goal: dict[str, float] = {}
        self._prio: list[str] = []
        self._plan_note = ""
        self.replans = 0

    # -- planning ---------------------------------------------------------------------------

    def _replan_key(self, ctx: PolicyContext) -> tuple[object, ...]:
        # Dock/removal/fault/derating changes come as triggers; the rest is in the key.
        return (
            int(ctx.now.day_s // self.bucket_s),
            len(ctx.slots),
            ctx.limit_kw,
            ctx.limit_until_s,
            ctx.queue,
        )

    def _buckets(self, ctx: PolicyContext) -> tuple[list[float], list[float], list[float]]:
        """(start offsets, lengths, remaining kWh) of the buckets, and prices via a side list."""
        t0 = ctx.now.day_s
        b = self.bucket_s
        starts: list[float] = []
        lens: list[float] = []
        off = 0.0
        first = (math.floor(t0 / b) + 1) * b - t0
        while off < self.horizon_s - 1e-9:
            end = min(self.horizon_s, first if off == 0.0 else off + b)
            starts.append(off)
            lens.append(end - off)
            off = end
        lease_end = None if ctx.limit_until_s is None else max(0.0, ctx.limit_until_s - ctx.now.t_s)
        caps: list[float] = []
        for s, ln in zip(starts, lens, strict=True):
            if lease_end is None or lease_end >= s + ln:
                kwh = ctx.limit_kw * ln
            elif lease_end <= s:
                kwh = ctx.base_limit_kw * ln
            else:
                kwh = ctx.limit_kw * (lease_end - s) + ctx.base_limit_kw * (s + ln - lease_end)
            caps.append(kwh / _HOUR_S)
        return starts, lens, caps

    def _plan(self, ctx: PolicyContext) -> None:
        cfg: GridConfig = ctx.config
        pack = cfg.pack
        target = min(cfg.max_soc_pct, cfg.ready_soc_pct + self.ready_margin_pct)
        starts, lens, caps = self._buckets(ctx)
        prices = [
            ctx.tariff.at(ctx.now.day_s + s + ln / 2).price_per_kwh
            for s, ln in zip(starts, lens, strict=True)
        ]
        order = sorted(range(len(starts)), key=lambda i: (prices[i], i))
        avail = [s for s in ctx.slots if s.available and s.soc_pct is not None]
        rated = [s.charger_rating_kw * min(1.0, max(0.0, s.derate_factor)) for s in avail]
        future_rated = (sum(rated) / len(rated)) if rated else 0.0
        cur = sorted(avail, key=lambda s: (-(s.soc_pct or 0.0), s.slot_id))
        supplies = [
            _Supply(
                s.slot_id, s.soc_pct or 0.0, 0.0, s.charger_rating_kw * min(1.0, s.derate_factor)
            )
            for s in cur
        ]
        arrivals = ctx.forecast.arrival_times(ctx.now.day_s, self.horizon_s, ctx.forecast_factor)
        arr_soc = ctx.forecast.arrival_soc_pct
        supplies += [_Supply(None, arr_soc, 0.0, future_rated) for _ in range(ctx.queue)]
        supplies += [_Supply(None, arr_soc, a, future_rated) for a in arrivals]
        lead = self.lead_s
        deadlines = [0.0] * (ctx.queue + cfg.reserve.margin_packs)
        deadlines += [max(0.0, a - lead) for a in arrivals]
        goal: dict[str, float] = {}
        prio: list[str] = []
        short_kwh = 0.0
        first_need: float | None = None
        for sup, dl in zip(supplies, deadlines, strict=False):
            if sup.soc_pct >= target - 1e-9:
                continue
            if sup.rated_kw <= 0:
                continue
            need = (target - sup.soc_pct) / 100 * pack.capacity_kwh / pack.charging_efficiency
            hours = _charge_times(pack, round(sup.rated_kw, 3)).hours(sup.soc_pct, target)
            rate = need / hours if hours > 0 else sup.rated_kw
            lo = sup.avail_off_s
            hi = max(dl, lo + hours * _HOUR_S)  # too late already: as soon as possible
            got0 = 0.0
            for i in order:
                ov = min(starts[i] + lens[i], hi) - max(starts[i], lo)
                if ov <= 0 or caps[i] <= 1e-9:
                    continue
                take = min(need, caps[i], rate * ov / _HOUR_S)
                caps[i] -= take
                need -= take
                if i == 0:
                    got0 += take
                if need <= 1e-9:
                    break
            short_kwh += max(0.0, need)
            if sup.slot_id is not None and got0 > 0:
                goal[sup.slot_id] = min(
                    target,
                    sup.soc_pct + got0 * pack.charging_efficiency / pack.capacity_kwh * 100,
                )
                prio.append(sup.slot_id)
                if first_need is None:
                    first_need = dl
        self._goal = goal
        self._prio = prio
        if short_kwh > 1:
            self._plan_note = f"short of {short_kwh:.0f} kWh for forecast swaps"
        elif first_need is not None:
            self._plan_note = (
                f"charging for swaps expected from {_fmt_day(ctx.now.day_s + first_need + lead)}"
            )
        else:
            self._plan_note = "reserve met, holding for cheaper power"
        self.replans += 1

    # -- decision ---------------------------------------------------------------------------

    def decide(self, ctx: PolicyContext) -> Decision:
        cfg = ctx.config
        key = self._replan_key(ctx)
        if key != self._key or ctx.trigger != "period":
            self._plan(ctx)
            self._key = key
        by_id = {s.slot_id: s for s in ctx.slots}
        out: dict[str, float] = {}
        left = ctx.limit_kw
        reasons: list[str] = []

        def give(s: SlotInput) -> None:
            nonlocal left
            p = min(s.charge_limit_kw, left)
            if p > 0:
                out[s.slot_id] = p
                left -= p

        # 1. Reserve first, whatever the price.
        deficit = ctx.reserve_packs - ctx.ready_packs
        if deficit > 0:
            nonready = sorted(
                (s for s in ctx.slots if s.available and not is_ready(s, cfg.ready_soc_pct)),
                key=lambda s: (-(s.soc_pct or 0.0), s.slot_id),
            )
            for s in nonready[:deficit]:
                give(s)
            reasons.append(f"reserve short: {ctx.ready_packs} ready of {ctx.reserve_packs} needed")
        # 2. The plan for this bucket.
        for sid in self._prio:
            planned = by_id.get(sid)
            if planned is None or sid in out or planned.soc_pct is None or not planned.available:
                continue
            if planned.soc_pct < self._goal.get(sid, 0.0) - 1e-6:
                give(planned)
        # 3. Export from packs outside the reserve (they hold no top-up meanwhile).
        if ctx.export_request_kw > 0 and deficit <= 0:
            want = ctx.export_request_kw
            ranked = sorted(
                (s for s in ctx.slots if s.available),
                key=lambda s: (-(s.soc_pct or 0.0), s.slot_id),
            )
            n = 0
            for s in ranked[max(0, ctx.reserve_packs) :]:
                if want <= 0:
                    break
                if s.slot_id in out or (s.soc_pct or 0.0) <= cfg.export_floor_soc_pct:
                    continue
                p = min(s.export_limit_kw, want)
                if p > 0:
                    out[s.slot_id] = -p
                    want -= p
                    n += 1
            reasons.append(f"export request {ctx.export_request_kw:g} kW from {n} surplus packs")
        # 4. Cheapest power of the day: top everything up, unless exporting.
        price = ctx.tariff.at(ctx.now.day_s).price_per_kwh
        if price <= ctx.tariff.min_price + 1e-9 and ctx.export_request_kw <= 0:
            tops = sorted(
                (
                    s
                    for s in ctx.slots
                    if s.available
                    and s.slot_id not in out
                    and (s.soc_pct or 0.0) < cfg.max_soc_pct - 1e-6
                ),
                key=lambda s: (-(s.soc_pct or 0.0), s.slot_id),
            )
            for s in tops:
                give(s)
            if tops:
                reasons.append(f"cheapest tariff: topping up to {cfg.max_soc_pct:g} %")
        if not reasons:
            reasons.append(self._plan_note if out else "reserve met, holding for cheaper power")
            if not any(s.available and (s.soc_pct or 0.0) < cfg.ready_soc_pct for s in ctx.slots):
                reasons = ["all packs ready"]
        return Decision(out, "; ".join(reasons))


POLICY_NAMES = ("naive", "smart", "predictive", "optimal", "optimal-lp")
LIVE_POLICIES = ("naive", "smart", "predictive")


def make_policy(name: str) -> Policy:
    """A live policy by name. `optimal` is not one: it needs the future (simulate-day only).
    `predictive` made here solves inline; the daemon passes its solver process instead
    (`PredictivePolicy(planner=...)`)."""
    if name == "naive":
        return NaivePolicy()
    if name == "smart":
        return SmartPolicy()
    if name == "predictive":
        from edge.scheduler.predictive import PredictivePolicy

        return PredictivePolicy()
    raise ValueError(f"unknown live policy {name!r}; choose from {', '.join(LIVE_POLICIES)}")
