"""What a driver needs to raise and clear alarms, without knowing the station.

The station (edge.alarms) hands each driver a sink bound to that driver's component; the
catalogue of codes lives there. Drivers name codes as strings from that catalogue. A sans-I/O
core does not call a sink: it returns `RaiseAlarm` / `ClearAlarm` actions among its others and
its service hands them to `carry_out`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class AlarmSink(Protocol):
    def raise_alarm(self, code: str, source: str, detail: str = "") -> None:
        """Raise `code` for `source` (a device or slot id). Raising an active alarm again is a no-op."""
        ...

    def clear_alarm(self, code: str, source: str) -> None:
        """Clear `code` for `source` if this raiser raised it."""
        ...


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    code: str
    source: str  # a device, slot or swap id
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ClearAlarm:
    code: str
    source: str


AlarmAction = RaiseAlarm | ClearAlarm


def carry_out(sink: AlarmSink, action: AlarmAction) -> None:
    if isinstance(action, RaiseAlarm):
        sink.raise_alarm(action.code, action.source, action.detail)
    else:
        sink.clear_alarm(action.code, action.source)
