"""Simulated-day scenarios (edge/scheduler/scenarios/*.yaml, `builtin:NAME`): a statistical day plus timed events.

The same file is what `swapd demo --scenario` replays. Loaded through drivers.core.datafile, so every
problem reads `FILE:LINE: dotted.field.path: message`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.core.datafile import FileRef, load_model
from drivers.core.resources import data_file, is_builtin, shelf
from edge.scheduler.config import GridConfig, PackModel, parse_hhmm


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationModel(_Model):
    slots: Annotated[int, Field(gt=0, le=1000)]
    packs: Annotated[int, Field(gt=0)]
    initial_soc_pct: Annotated[float, Field(ge=0, le=100)]
    charger_rating_kw: Annotated[float, Field(gt=0)]
    """Per slot, grid-side."""
    bidirectional: bool = False
    pack: PackModel

    @model_validator(mode="after")
    def _fits(self) -> StationModel:
        if self.packs > self.slots:
            raise ValueError(f"{self.packs} packs do not fit in {self.slots} slots")
        return self


class ArrivalSoc(_Model):
    """Arriving packs' SOC: normal(mean, std) clipped to [min, max]."""

    mean_pct: Annotated[float, Field(ge=0, le=100)]
    std_pct: Annotated[float, Field(ge=0)]
    min_pct: Annotated[float, Field(ge=0, le=100)] = 0.0
    max_pct: Annotated[float, Field(ge=0, le=100)] = 100.0

    @model_validator(mode="after")
    def _order(self) -> ArrivalSoc:
        if self.min_pct > self.max_pct:
            raise ValueError(f"min_pct {self.min_pct} above max_pct {self.max_pct}")
        return self


class Arrivals(_Model):
    swaps_per_hour: Annotated[
        list[Annotated[int, Field(ge=0)]], Field(min_length=24, max_length=24)
    ]
    """Vehicles arriving in each hour 00..23; times uniform within the hour."""
    soc: ArrivalSoc


def _time_of_day(v: str) -> str:
    parse_hhmm(v)
    return v


class ScenarioEvent(_Model):
    """A timed event: `dispatch_limit` (power_kw), `derate` (factor, slots), `fault` (slot),
    `export_request` (power_kw). Active from `at` until `until` (local HH:MM, same day)."""

    kind: Literal["dispatch_limit", "derate", "fault", "export_request"]
    at: str
    until: str
    power_kw: Annotated[float | None, Field(ge=0)] = None
    factor: Annotated[float | None, Field(ge=0, le=1)] = None
    slots: list[Annotated[int, Field(ge=0)]] | Literal["all"] | None = None
    slot: Annotated[int | None, Field(ge=0)] = None

    _tod = field_validator("at", "until")(_time_of_day)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> ScenarioEvent:
        if parse_hhmm(self.until) <= parse_hhmm(self.at):
            raise ValueError(f"until {self.until} is not after at {self.at}")
        need = {
            "dispatch_limit": {"power_kw"},
            "export_request": {"power_kw"},
            "derate": {"factor"},
            "fault": {"slot"},
        }[self.kind]
        allowed = need | ({"slots"} if self.kind == "derate" else set())
        given = {k for k in ("power_kw", "factor", "slots", "slot") if getattr(self, k) is not None}
        missing = need - given
        extra = given - allowed
        if missing:
            raise ValueError(f"{self.kind} needs {', '.join(sorted(missing))}")
        if extra:
            raise ValueError(f"{self.kind} does not take {', '.join(sorted(extra))}")
        return self

    @property
    def start_s(self) -> float:
        return parse_hhmm(self.at) * 60.0

    @property
    def end_s(self) -> float:
        return parse_hhmm(self.until) * 60.0


class Scenario(_Model):
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    station: StationModel
    grid: GridConfig
    arrivals: Arrivals
    events: list[ScenarioEvent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross(self) -> Scenario:
        for i, e in enumerate(self.events):
            idx = [e.slot] if e.slot is not None else e.slots if isinstance(e.slots, list) else []
            for s in idx:
                if s >= self.station.slots:
                    raise ValueError(f"events.{i}: slot {s} beyond the {self.station.slots} slots")
            if e.kind == "export_request" and not (
                self.grid.bidirectional and self.station.bidirectional
            ):
                raise ValueError(f"events.{i}: export_request needs bidirectional chargers")
        return self


# Package data: the shipped scenarios.
SCENARIOS = shelf("edge.scheduler", "scenarios")


def load_scenario(path: FileRef) -> Scenario:
    """Read and validate a scenario: a path, `builtin:NAME` (shipped in
    edge/scheduler/scenarios/) or a shipped file. Raises drivers.core.datafile.DataFileError."""
    if is_builtin(path):
        assert isinstance(path, str)
        path = data_file(path, Path.cwd(), SCENARIOS)
    return load_model(Scenario, path)
