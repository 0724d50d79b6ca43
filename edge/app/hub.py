"""The station's one late seam.

The rooms report upward (a slot changed, an event happened, a pack was identified, the scheduler
allocated) to services that are built after them: the publisher needs the MQTT link, which needs
the command service, which needs the rooms. Everything else is injected through constructors in
dependency order; these reports go through the hub, and the composition root connects the two
listeners once, before any service runs. Reports made before that are kept and delivered then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from drivers.core.log import get_logger
from edge.events import EventSink
from edge.scheduler.core import Allocation

if TYPE_CHECKING:
    from edge.telemetry.models import Details

log = get_logger("station")


class Publishing(EventSink, Protocol):
    def slot_changed(self, slot_id: str) -> None: ...
    def allocation(self, alloc: Allocation) -> None: ...
    def refresh(self) -> None: ...
    def robot_changed(self) -> None: ...


PackIdentified = Callable[[str, str, str], None]


class StationHub:
    def __init__(self) -> None:
        self._publisher: Publishing | None = None
        self._identified: PackIdentified | None = None
        self._early: list[Callable[[], object]] = []

    def connect(self, publisher: Publishing, identified: PackIdentified) -> None:
        if self._publisher is not None:
            raise RuntimeError("station hub connected twice")
        self._publisher = publisher
        self._identified = identified
        early, self._early = self._early, []
        for report in early:
            try:
                report()
            except Exception:  # noqa: BLE001 - one bad early report must not stop the build
                log.exception("early report not delivered")

    def _deliver(self, report: Callable[[], object]) -> None:
        if self._publisher is None:
            self._early.append(report)
        else:
            report()

    # ---- reports from the rooms ----------------------------------------------------------
    def slot_changed(self, slot_id: str) -> None:
        self._deliver(lambda: self._pub.slot_changed(slot_id))

    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> None:
        self._deliver(lambda: self._pub.emit_event(event_type, details))

    def allocation(self, alloc: Allocation) -> None:
        self._deliver(lambda: self._pub.allocation(alloc))

    def refresh(self) -> None:
        self._deliver(lambda: self._pub.refresh())

    def robot_changed(self) -> None:
        self._deliver(lambda: self._pub.robot_changed())

    def pack_identified(self, slot_id: str, pack_id: str, pack_type: str) -> None:
        def report() -> None:
            assert self._identified is not None
            self._identified(slot_id, pack_id, pack_type)

        self._deliver(report)

    @property
    def _pub(self) -> Publishing:
        assert self._publisher is not None
        return self._publisher
