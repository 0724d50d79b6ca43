"""What a room needs to emit an event, without knowing the telemetry service.

The one event sink: the telemetry service (`edge.telemetry.service.Telemetry`) and the state
publisher in front of it implement it; the slot service and the alarm events emit through it.
Event types and their payload models are the catalogue `edge.telemetry.models.EVENT_DETAILS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edge.telemetry.models import Details


class EventSink(Protocol):
    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> object:
        """Store (and queue) one event; raises for an unknown type or details its model refuses."""
        ...
