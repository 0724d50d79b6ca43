"""The station config's `grid` section: cap, tariff, default limit, export, scheduler tuning.

Pydantic models with `extra="forbid"`; scenarios (edge/scheduler/scenarios/*.yaml) reuse them, so a
simulated day and the live station read the same grid description. Times of day are local
`HH:MM` strings; `24:00` may end a window and a window may wrap midnight (`22:00-06:00`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DAY_S = 86_400.0
_MIN_PER_DAY = 1440


def parse_hhmm(text: str) -> int:
    """`HH:MM` -> minutes after midnight; `24:00` is allowed (1440)."""
    hh, sep, mm = text.strip().partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2:
        raise ValueError(f"{text!r} is not HH:MM")
    minutes = int(hh) * 60 + int(mm)
    if int(mm) >= 60 or minutes > _MIN_PER_DAY:
        raise ValueError(f"{text!r} is not a time of day (00:00..24:00)")
    return minutes


def parse_window(text: str) -> tuple[int, int]:
    """`HH:MM-HH:MM` -> (start, end) minutes; end <= start means the window wraps midnight."""
    start_s, sep, end_s = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM")
    start, end = parse_hhmm(start_s), parse_hhmm(end_s)
    if start == end:
        raise ValueError(f"{text!r} is an empty window")
    if start == _MIN_PER_DAY:
        raise ValueError(f"{text!r} starts at 24:00")
    return start, end


def _fmt(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TariffPeriod(_Model):
    name: Annotated[str, Field(min_length=1)]
    price_per_kwh: float
    windows: Annotated[list[str], Field(min_length=1)]

    @field_validator("windows")
    @classmethod
    def _windows_parse(cls, v: list[str]) -> list[str]:
        for w in v:
            parse_window(w)
        return v


class TariffConfig(_Model):
    """Time-of-use tariff: named periods with a price and their windows; together they must
    cover the 24 hours exactly once."""

    currency: str = "CNY"
    periods: Annotated[list[TariffPeriod], Field(min_length=1)]
    demand_charge_per_kw_month: Annotated[float | None, Field(ge=0)] = None
    """Monthly charge per kW of the month's peak demand (highest quarter-hour mean grid
    power); None: no demand charge. A day carries 1/30 of it (`daily_demand_charge_per_kw`)."""

    @property
    def daily_demand_charge_per_kw(self) -> float:
        """A day's share of the monthly demand charge, per kW of the day's peak (every day of
        the month taken as this one)."""
        return (self.demand_charge_per_kw_month or 0.0) / 30.0

    @field_validator("periods")
    @classmethod
    def _covers_day(cls, periods: list[TariffPeriod]) -> list[TariffPeriod]:
        owner: list[str | None] = [None] * _MIN_PER_DAY
        names = [p.name for p in periods]
        if len(set(names)) != len(names):
            raise ValueError(f"period names must be unique: {names}")
        for p in periods:
            for w in p.windows:
                start, end = parse_window(w)
                minutes = range(start, end) if end > start else [*range(start, 1440), *range(end)]
                for m in minutes:
                    if owner[m] is not None:
                        raise ValueError(
                            f"window {w} of {p.name!r} overlaps {owner[m]!r} at {_fmt(m)}"
                        )
                    owner[m] = p.name
        gaps: list[str] = []
        m = 0
        while m < _MIN_PER_DAY:
            if owner[m] is None:
                g = m
                while m < _MIN_PER_DAY and owner[m] is None:
                    m += 1
                gaps.append(f"{_fmt(g)}-{_fmt(m)}")
            m += 1
        if gaps:
            raise ValueError(f"tariff does not cover 24 h: no period for {', '.join(gaps)}")
        return periods


class ChargePoint(_Model):
    soc_pct: Annotated[float, Field(ge=0, le=100)]
    power_kw: Annotated[float, Field(ge=0)]


class PackModel(_Model):
    """What the planner assumes of a pack: size, efficiency, and the BMS charging curve
    (grid-side kW against SOC, piecewise linear)."""

    capacity_kwh: Annotated[float, Field(gt=0)] = 70.0
    charging_efficiency: Annotated[float, Field(gt=0, le=1)] = 0.95
    charging_curve: Annotated[list[ChargePoint], Field(min_length=1)] = Field(
        default_factory=lambda: [
            ChargePoint(soc_pct=0, power_kw=60),
            ChargePoint(soc_pct=80, power_kw=60),
            ChargePoint(soc_pct=100, power_kw=10),
        ]
    )

    @field_validator("charging_curve")
    @classmethod
    def _ascending(cls, v: list[ChargePoint]) -> list[ChargePoint]:
        socs = [p.soc_pct for p in v]
        if socs != sorted(socs) or len(set(socs)) != len(socs):
            raise ValueError("charging_curve points must have strictly increasing soc_pct")
        return v

    def curve_kw(self, soc_pct: float) -> float:
        """BMS-requested power (grid-side) at `soc_pct`, linear between points."""
        return self.curve()(soc_pct)

    def curve(self) -> Callable[[float], float]:
        """A fast function soc_pct -> kW for hot loops."""
        xs = [p.soc_pct for p in self.charging_curve]
        ys = [p.power_kw for p in self.charging_curve]
        segs = [
            (xs[i + 1], ys[i], (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]), xs[i])
            for i in range(len(xs) - 1)
        ]
        first_x, first_y, last_y = xs[0], ys[0], ys[-1]

        def kw(soc_pct: float) -> float:
            if soc_pct <= first_x:
                return first_y
            for x_end, y0, slope, x0 in segs:
                if soc_pct <= x_end:
                    return y0 + slope * (soc_pct - x0)
            return last_y

        return kw


class ReserveConfig(_Model):
    """Keep enough ready packs for the swaps expected within `horizon_s`, plus `margin_packs`."""

    horizon_s: Annotated[float, Field(ge=0)] = 1800.0
    margin_packs: Annotated[int, Field(ge=0)] = 1
    buffer_packs: Annotated[int, Field(ge=0)] = 2
    """predictive only: its plan has each swap's pack ready this many forecast swaps early
    (arrivals bunch around the mean forecast); 1 is cheaper and makes a vehicle wait now and
    then, 2 kept waits at or below naive's in the bench."""


class GridConfig(_Model):
    """The `grid` section of the station config."""

    cap_kw: Annotated[float, Field(gt=0)]
    default_limit_kw: Annotated[float | None, Field(gt=0)] = None
    """Limit when no dispatch lease is active; None means the cap."""
    bidirectional: bool = False
    max_export_kw: Annotated[float, Field(ge=0)] = 0.0
    export_floor_soc_pct: Annotated[float, Field(ge=0, le=100)] = 50.0
    """Surplus packs export down to this SOC at most; reserve packs never export."""
    policy: Literal["naive", "smart", "predictive"] = "smart"
    period_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    ready_soc_pct: Annotated[float, Field(gt=0, le=100)] = 90.0
    """A pack at or above this SOC can be handed to a vehicle."""
    max_soc_pct: Annotated[float, Field(gt=0, le=100)] = 95.0
    """Packs are never charged beyond this SOC."""
    reserve: ReserveConfig = Field(default_factory=ReserveConfig)
    swap_forecast_per_hour: Annotated[
        list[Annotated[float, Field(ge=0)]], Field(min_length=24, max_length=24)
    ]
    """Expected swaps in each local hour 00..23; corrected live by arrivals seen."""
    forecast_arrival_soc_pct: Annotated[float, Field(ge=0, le=100)] = 25.0
    timezone: str = "Asia/Shanghai"
    pack: PackModel = Field(default_factory=PackModel)
    tariff: TariffConfig

    @model_validator(mode="after")
    def _consistent(self) -> GridConfig:
        if self.default_limit_kw is not None and self.default_limit_kw > self.cap_kw:
            raise ValueError(
                f"default_limit_kw {self.default_limit_kw} exceeds cap_kw {self.cap_kw}"
            )
        if self.ready_soc_pct > self.max_soc_pct:
            raise ValueError(
                f"ready_soc_pct {self.ready_soc_pct} above max_soc_pct {self.max_soc_pct}"
            )
        if self.max_export_kw > 0 and not self.bidirectional:
            raise ValueError("max_export_kw needs bidirectional: true")
        return self

    @property
    def base_limit_kw(self) -> float:
        return self.cap_kw if self.default_limit_kw is None else self.default_limit_kw
