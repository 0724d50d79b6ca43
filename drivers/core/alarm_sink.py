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
