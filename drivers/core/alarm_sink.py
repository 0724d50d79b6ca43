"""What a driver needs to raise and clear alarms, without knowing the station.

The station (edge.alarms) hands each driver a sink bound to that driver's component; the
catalogue of codes lives there. Drivers name codes as strings from that catalogue.
"""

from __future__ import annotations

from typing import Protocol


class AlarmSink(Protocol):
    def raise_alarm(self, code: str, source: str, detail: str = "") -> None:
        """Raise `code` for `source` (a device or slot id). Raising an active alarm again is a no-op."""
        ...

    def clear_alarm(self, code: str, source: str) -> None:
        """Clear `code` for `source` if this raiser raised it."""
        ...


class RecordingAlarmSink:
    """For tests and simulators: keeps the active set and the history."""

    def __init__(self) -> None:
        self.active: set[tuple[str, str]] = set()
        self.history: list[tuple[str, str, str]] = []

    def raise_alarm(self, code: str, source: str, detail: str = "") -> None:
        if (code, source) not in self.active:
            self.active.add((code, source))
            self.history.append(("raised", code, source))

    def clear_alarm(self, code: str, source: str) -> None:
        if (code, source) in self.active:
            self.active.discard((code, source))
            self.history.append(("cleared", code, source))
