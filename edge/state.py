"""The station's state: one snapshot that every service updates and telemetry reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from edge.alarms import ActiveAlarm, AlarmManager
from edge.scheduler.core import GridMode

__all__ = ["GridMode", "GridState", "OperatingMode", "StationState"]


class OperatingMode(StrEnum):
    NORMAL = "normal"
    MAINTENANCE = "maintenance"  # no new swaps; charging goes on
    DRAIN = "drain"  # finish what runs, start nothing new


@dataclass(slots=True)
class GridState:
    cap_kw: float
    limit_kw: float
    power_kw: float = 0.0
    grid_mode: GridMode = GridMode.CHARGE
    grid_reason: str = "startup"
    tariff_period: str = ""


@dataclass(slots=True)
class StationState:
    station_id: str
    grid: GridState
    operating_mode: OperatingMode = OperatingMode.NORMAL
    alarms: AlarmManager | None = field(default=None, repr=False)

    @property
    def active_alarms(self) -> list[ActiveAlarm]:
        return self.alarms.active if self.alarms is not None else []

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        return (
            f"mode={self.operating_mode} grid={self.grid.grid_mode} "
            f"power={self.grid.power_kw:.0f}/{self.grid.limit_kw:.0f}kW alarms={len(self.active_alarms)}"
        )
