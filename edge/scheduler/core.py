"""The charging scheduler core: pure, deterministic, no I/O, time passed in.

Every period (and at once on a trigger: a new dispatch limit, a docked or removed pack, a fault)
the caller hands `Scheduler.allocate` the slots as they are now; a pluggable policy proposes a
power per slot, and the core enforces the invariants whatever the policy said:
  - each grant lies within its slot's limits (BMS request, charger rating x temperature
    derating; export only on bidirectional chargers while an export request is active);
  - the sum of charging grants never exceeds the active station limit (the cap, or a dispatch
    lease from `set_power_limit`, which reverts to the configured default when it ends);
  - exports never exceed the export request.
Powers are grid-side kW, positive into packs (charging), negative out of packs (export).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from edge.scheduler.config import GridConfig
from edge.scheduler.forecast import SwapForecast
from edge.scheduler.tariff import Tariff

_EPS_KW = 1e-6


class GridMode(StrEnum):
    CHARGE = "charge"  # the station draws power for its packs
    HOLD = "hold"  # no charging: nothing to do, or holding back (tariff, limit)
    EXPORT = "export"  # surplus packs feed the grid


class SchedulerError(Exception):
    """Base of the scheduler's errors."""


class InvalidRequestError(SchedulerError, ValueError):
    """A dispatch or export request the scheduler cannot accept (bad value, already expired)."""


class ExportNotSupportedError(SchedulerError):
    """An export request on a station whose chargers are not bidirectional."""


@dataclass(frozen=True, slots=True)
class Instant:
    """`t_s`: monotonic seconds (leases, periods); `day_s`: seconds after local midnight
    (tariff, forecast)."""

    t_s: float
    day_s: float


@dataclass(frozen=True, slots=True)
class SlotInput:
    """One rack slot as the slot controller sees it now."""

    slot_id: str
    soc_pct: float | None = None  # None: no pack docked
    bms_limit_kw: float = 0.0  # the BMS request (BCL) as grid-side kW
    charger_rating_kw: float = 0.0
    derate_factor: float = 1.0  # temperature derating of the charger, 0..1
    faulted: bool = False
    docked_at_s: float = 0.0  # monotonic time the pack docked (first docked, first served)
    bidirectional: bool = False
    capacity_kwh: float = 70.0
    # The pack is within the swap's hand-over window apart from its SOC (temperature, health):
    # a full pack too hot to hand over is no reserve for the next vehicle.
    handover_ok: bool = True

    # Derived once (the allocation reads them many times).
    charge_limit_kw: float = field(init=False, default=0.0)
    export_limit_kw: float = field(init=False, default=0.0)
    available: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        available = self.soc_pct is not None and not self.faulted
        rated = self.charger_rating_kw * min(1.0, max(0.0, self.derate_factor))
        charge = max(0.0, min(self.bms_limit_kw, rated)) if available else 0.0
        export = max(0.0, rated) if available and self.bidirectional else 0.0
        object.__setattr__(self, "available", available)
        object.__setattr__(self, "charge_limit_kw", charge)
        object.__setattr__(self, "export_limit_kw", export)

    @property
    def docked(self) -> bool:
        return self.soc_pct is not None


@dataclass(frozen=True, slots=True)
class Grant:
    slot_id: str
    power_kw: float
    limit_kw: float  # the slot's charging limit at allocation time


@dataclass(frozen=True, slots=True)
class Allocation:
    at: Instant
    grants: tuple[Grant, ...]
    total_kw: float
    limit_kw: float  # the active station import limit
    limit_source: str  # "cap", "default" or "dispatch"
    grid_mode: GridMode
    grid_reason: str
    tariff_period: str
    price_per_kwh: float
    ready_packs: int
    reserve_packs: int
    trigger: str

    def power_kw(self, slot_id: str) -> float:
        for g in self.grants:
            if g.slot_id == slot_id:
                return g.power_kw
        return 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    power_kw: float
    valid_until_s: float  # monotonic


@dataclass(frozen=True, slots=True)
class PolicyContext:
    now: Instant
    slots: tuple[SlotInput, ...]
    limit_kw: float
    limit_source: str
    limit_until_s: float | None  # when the active limit reverts (monotonic); None: it stays
    base_limit_kw: float  # the limit after the lease
    export_request_kw: float
    tariff: Tariff
    forecast: SwapForecast
    forecast_factor: float
    config: GridConfig
    ready_packs: int
    reserve_packs: int
    queue: int  # vehicles waiting for a ready pack
    trigger: str  # why this allocation runs: "period" or the triggers since the last one
    demand_peak_kw: float = 0.0  # highest quarter-hour mean of the allocated power so far


@dataclass(frozen=True, slots=True)
class Decision:
    power_kw: dict[str, float] = field(default_factory=dict)
    reason: str = ""


class Policy(Protocol):
    name: str

    def decide(self, ctx: PolicyContext) -> Decision: ...


def is_ready(slot: SlotInput, ready_soc_pct: float) -> bool:
    return slot.available and slot.soc_pct is not None and slot.soc_pct >= ready_soc_pct - 1e-9


def count_ready(slots: Sequence[SlotInput], ready_soc_pct: float) -> int:
    """Packs a vehicle could be given now: the reserve."""
    r = ready_soc_pct - 1e-9
    return sum(
        1
        for s in slots
        if s.available and s.handover_ok and s.soc_pct is not None and s.soc_pct >= r
    )


class Scheduler:
    """Leases, triggers, reserve bookkeeping and the invariants around a pluggable policy."""

    def __init__(self, config: GridConfig, policy: Policy) -> None:
        self.config = config
        self.policy = policy
        self.tariff = Tariff(config.tariff)
        self.forecast = SwapForecast(
            config.swap_forecast_per_hour, arrival_soc_pct=config.forecast_arrival_soc_pct
        )
        self._lease: Lease | None = None
        self._export: Lease | None = None
        self._pending: list[str] = ["start"]
        self._last_t_s: float | None = None
        self._queue = 0
        self.last: Allocation | None = None
        self.demand = DemandMeter()

    # -- inputs -----------------------------------------------------------------------------

    def set_power_limit(self, power_kw: float, valid_until_s: float, now_t_s: float) -> Lease:
        """A dispatch lease: import at most `power_kw` until `valid_until_s` (monotonic), then
        revert to the configured default. Replaces any earlier lease; triggers reallocation."""
        if not math.isfinite(power_kw) or power_kw < 0:
            raise InvalidRequestError(f"power_kw must be >= 0, got {power_kw}")
        if not math.isfinite(valid_until_s) or valid_until_s <= now_t_s:
            raise InvalidRequestError("valid_until is not in the future")
        self._lease = Lease(min(power_kw, self.config.cap_kw), valid_until_s)
        self.trigger("dispatch_limit")
        return self._lease

    def clear_power_limit(self) -> None:
        if self._lease is not None:
            self._lease = None
            self.trigger("dispatch_limit_cleared")

    def request_export(self, power_kw: float, valid_until_s: float, now_t_s: float) -> Lease:
        """Export up to `power_kw` from surplus packs until `valid_until_s` (monotonic)."""
        if not self.config.bidirectional:
            raise ExportNotSupportedError("chargers are not bidirectional")
        if not math.isfinite(power_kw) or power_kw < 0:
            raise InvalidRequestError(f"power_kw must be >= 0, got {power_kw}")
        if not math.isfinite(valid_until_s) or valid_until_s <= now_t_s:
            raise InvalidRequestError("valid_until is not in the future")
        self._export = Lease(min(power_kw, self.config.max_export_kw), valid_until_s)
        self.trigger("export_request")
        return self._export

    def observe_arrival(self, now: Instant, soc_pct: float | None = None) -> None:
        """A vehicle arrived for a swap (feeds the forecast correction)."""
        self.forecast.observe(now.t_s, now.day_s, soc_pct)

    def set_queue(self, waiting: int) -> None:
        """Vehicles waiting for a ready pack; a change triggers reallocation."""
        if waiting != self._queue:
            self._queue = waiting
            self.trigger("queue")

    def trigger(self, reason: str) -> None:
        """Something changed (pack docked/removed, fault, limit): reallocate at once."""
        self._pending.append(reason)

    # -- timing -----------------------------------------------------------------------------

    def _expire(self, now_t_s: float) -> None:
        if self._lease is not None and now_t_s >= self._lease.valid_until_s - 1e-6:
            self._lease = None
            self._pending.append("dispatch_limit_expired")
        if self._export is not None and now_t_s >= self._export.valid_until_s - 1e-6:
            self._export = None
            self._pending.append("export_expired")

    def next_due_s(self) -> float:
        """Monotonic time of the next allocation that is due without a trigger."""
        if self._pending or self._last_t_s is None:
            return -math.inf
        due = self._last_t_s + self.config.period_s
        for lease in (self._lease, self._export):
            if lease is not None:
                due = min(due, lease.valid_until_s)
        return due

    def needs_reallocation(self, now_t_s: float) -> bool:
        # A microsecond of slack: clocks that add float steps land a hair short of the period.
        return now_t_s >= self.next_due_s() - 1e-6

    @property
    def pending_triggers(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def active_limit(self, now_t_s: float) -> tuple[float, str, float | None]:
        """(limit kW, source, until) for imports at `now_t_s`."""
        base = self.config.base_limit_kw
        base_src = "cap" if self.config.default_limit_kw is None else "default"
        lease = self._lease
        if lease is not None and now_t_s < lease.valid_until_s - 1e-6:
            return min(lease.power_kw, self.config.cap_kw), "dispatch", lease.valid_until_s
        return base, base_src, None

    # -- the allocation ---------------------------------------------------------------------

    def allocate(self, now: Instant, slots: Sequence[SlotInput]) -> Allocation:
        self._expire(now.t_s)
        if self.last is not None:
            self.demand.add(self.last.at, now, self.last.total_kw)
        trigger = ",".join(dict.fromkeys(self._pending)) or "period"
        self._pending.clear()
        self._last_t_s = now.t_s
        cfg = self.config
        limit_kw, source, until = self.active_limit(now.t_s)
        export_kw = 0.0
        if self._export is not None and cfg.bidirectional:
            export_kw = self._export.power_kw
        factor = self.forecast.factor(now.t_s, now.day_s)
        ready = count_ready(slots, cfg.ready_soc_pct)
        expected = self.forecast.expected(now.day_s, cfg.reserve.horizon_s, factor)
        reserve = math.ceil(expected - 1e-6) + cfg.reserve.margin_packs + self._queue
        period = self.tariff.at(now.day_s)
        ctx = PolicyContext(
            now=now,
            slots=tuple(slots),
            limit_kw=limit_kw,
            limit_source=source,
            limit_until_s=until,
            base_limit_kw=cfg.base_limit_kw,
            export_request_kw=export_kw,
            tariff=self.tariff,
            forecast=self.forecast,
            forecast_factor=factor,
            config=cfg,
            ready_packs=ready,
            reserve_packs=reserve,
            queue=self._queue,
            trigger=trigger,
            demand_peak_kw=self.demand.peak_kw,
        )
        decision = self.policy.decide(ctx)
        grants = _enforce(slots, decision.power_kw, limit_kw, export_kw)
        total = sum(g.power_kw for g in grants)
        if total > 0.05:
            mode = GridMode.CHARGE
        elif total < -0.05:
            mode = GridMode.EXPORT
        else:
            mode = GridMode.HOLD
        reason = decision.reason or mode.value
        if source == "dispatch":
            reason += f" (dispatch limit {limit_kw:g} kW)"
        alloc = Allocation(
            at=now,
            grants=grants,
            total_kw=total,
            limit_kw=limit_kw,
            limit_source=source,
            grid_mode=mode,
            grid_reason=reason,
            tariff_period=period.name,
            price_per_kwh=period.price_per_kwh,
            ready_packs=ready,
            reserve_packs=reserve,
            trigger=trigger,
        )
        self.last = alloc
        return alloc


class DemandMeter:
    """Quarter-hour mean grid power (the billing demand of a demand charge) and its peak, from
    the allocations' totals held between allocations."""

    __slots__ = ("_q", "_kwh", "peak_kw")

    QUARTER_S = 900.0

    def __init__(self) -> None:
        self._q: int | None = None
        self._kwh = 0.0
        self.peak_kw = 0.0

    def add(self, since: Instant, now: Instant, kw: float) -> None:
        dt = max(0.0, now.t_s - since.t_s)
        q = int(since.day_s // self.QUARTER_S)
        if self._q is not None and q != self._q:
            self._kwh = 0.0
        self._q = q
        self._kwh += max(0.0, kw) * dt / 3600.0
        self.peak_kw = max(self.peak_kw, self._kwh / (self.QUARTER_S / 3600.0))


def _enforce(
    slots: Sequence[SlotInput], wanted: dict[str, float], limit_kw: float, export_kw: float
) -> tuple[Grant, ...]:
    """Clamp a policy's proposal to the invariants (per-slot limits, station limit, export)."""
    powers: list[float] = []
    charge = out = 0.0
    for s in slots:
        p = wanted.get(s.slot_id, 0.0)
        if p > 0.0:
            p = min(p, s.charge_limit_kw) if math.isfinite(p) else 0.0
            charge += p
        elif p < 0.0:
            p = max(p, -min(s.export_limit_kw, export_kw)) if math.isfinite(p) else 0.0
            out -= p
        powers.append(p)
    if charge > limit_kw + _EPS_KW:
        # A policy asked for too much: scale its charging down rather than trust it.
        f = max(0.0, limit_kw) / charge
        powers = [p * f if p > 0 else p for p in powers]
    if out > export_kw + _EPS_KW:
        f = export_kw / out
        powers = [p * f if p < 0 else p for p in powers]
    return tuple(
        Grant(s.slot_id, p if abs(p) > _EPS_KW else 0.0, s.charge_limit_kw)
        for s, p in zip(slots, powers, strict=True)
    )
