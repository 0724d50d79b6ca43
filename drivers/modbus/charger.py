"""How to drive a charger through whatever its map offers: the writes that set its output and
the writes that switch it off, for every combination the map format allows. Pure.

- `enable` point present: off = enable False, then the limit to 0; on = setpoints, then enable.
- no `enable` point: the limit is the switch (a limit of 0 pauses the output, as many vendors
  document); off = limit 0; on = setpoints (limit > 0).
- `voltage_setpoint_v` is optional (a device that follows its load's voltage has none).
- the limit is `current_limit_a`, or `power_limit_kw` for devices controlled by power (the
  wanted current x the output voltage measured now, pack-side).

`regmap.charger_problems` (run by `swapd check-config`) refuses a map where none of this works.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.modbus.codec import Value
from drivers.modbus.errors import PointError
from drivers.modbus.regmap import CHARGER_LIMITS, RegisterMap

Write = tuple[str, Value]


@dataclass(frozen=True, slots=True)
class ChargerControl:
    limit_point: str  # current_limit_a or power_limit_kw
    has_enable: bool
    has_voltage_setpoint: bool

    @classmethod
    def of(cls, m: RegisterMap) -> ChargerControl:
        limit = next((n for n in CHARGER_LIMITS if n in m.points), None)
        if limit is None:
            raise PointError(f"map {m.name!r} has no current_limit_a or power_limit_kw point")
        return cls(limit, "enable" in m.points, "voltage_setpoint_v" in m.points)

    def off_writes(self) -> list[Write]:
        """Output off, most decisive write first."""
        out: list[Write] = [("enable", False)] if self.has_enable else []
        out.append((self.limit_point, 0.0))
        return out

    def on_writes(
        self, voltage_v: float, current_a: float, measured_voltage_v: float | None = None
    ) -> list[Write]:
        """Setpoints for an output of `current_a` at `voltage_v` (limits before enable). With
        a power-limited device, `measured_voltage_v` (the output now) turns the current into
        power; before the output runs it is the wanted voltage."""
        current = round(max(0.0, current_a), 1)
        out: list[Write] = []
        if self.has_voltage_setpoint:
            out.append(("voltage_setpoint_v", round(voltage_v, 1)))
        if self.limit_point == "power_limit_kw":
            v = measured_voltage_v if measured_voltage_v and measured_voltage_v > 0 else voltage_v
            out.append(("power_limit_kw", round(current * max(0.0, v) / 1000.0, 3)))
        else:
            out.append(("current_limit_a", current))
        if self.has_enable:
            out.append(("enable", True))
        return out
