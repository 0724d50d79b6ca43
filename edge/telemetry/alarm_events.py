"""Alarms as events: every raise and clear of the AlarmManager becomes `alarm.raised` /
`alarm.cleared`, and the active set feeds station telemetry."""

from __future__ import annotations

from collections.abc import Iterable

from drivers.core.clock import utc_iso
from drivers.core.log import get_logger
from edge.alarms import ActiveAlarm, AlarmChange, AlarmManager
from edge.events import EventSink
from edge.telemetry.models import AlarmDetails, AlarmRef, EventType
from edge.telemetry.outbox import OutboxError

log = get_logger("telemetry")


class AlarmEvents:
    def __init__(self, manager: AlarmManager, sink: EventSink) -> None:
        self._sink = sink
        manager.subscribe(self._on_change)

    def _on_change(self, change: AlarmChange) -> None:
        a = change.alarm
        details = AlarmDetails(
            code=a.code,
            source=a.source,
            severity=a.severity,
            text=a.text,
            detail=a.detail,
            raised_at=utc_iso(a.raised_at),
        )
        try:
            etype = EventType.ALARM_RAISED if change.raised else EventType.ALARM_CLEARED
            self._sink.emit_event(etype, details)
        except OutboxError:
            # Raising an alarm is on safety paths: a full or broken disk must not break it.
            log.exception("alarm event not stored", code=a.code, source=a.source)


def alarm_refs(active: Iterable[ActiveAlarm]) -> list[AlarmRef]:
    """For StationTelemetry.active_alarms."""
    return [
        AlarmRef(code=a.code, source=a.source, severity=a.severity, raised_at=utc_iso(a.raised_at))
        for a in active
    ]
