"""Sans-I/O harness: a charger session and a simulated BMS wired back to back in simulated time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.can.codec import CanFrame
from drivers.can.events import Phase, PhaseChanged, SessionEvent
from drivers.can.session import ChargerLimits, ChargerMeasurements, ChargerSession, SessionOutput
from sim.devices.pack import BmsCore, PackModel, PackSpec

LIMITS = ChargerLimits(max_voltage_v=750.0, min_voltage_v=150.0, max_current_a=250.0)


@dataclass
class Wire:
    """Delivers frames between the two cores with `latency_s`; logs (time, frame, from_charger)."""

    charger: ChargerSession
    bms: BmsCore
    now: float = 0.0
    latency_s: float = 0.001
    log: list[tuple[float, CanFrame, bool]] = field(default_factory=list)
    events: list[tuple[float, SessionEvent]] = field(default_factory=list)
    in_flight: list[tuple[float, CanFrame, bool]] = field(default_factory=list)
    # A filter that may drop or alter frames from the BMS: return None to drop.
    bms_filter: Callable[[CanFrame], CanFrame | None] | None = None
    charger_filter: Callable[[CanFrame], CanFrame | None] | None = None
    # Follow the charger's current: integrate a perfect charger delivering the request.
    ideal_charger: bool = True

    def _take(self, outs: list[SessionOutput] | list[CanFrame], from_charger: bool) -> None:
        for o in outs:
            if isinstance(o, CanFrame):
                flt = self.charger_filter if from_charger else self.bms_filter
                if flt is not None:
                    f = flt(o)
                    if f is None:
                        continue
                    o = f
                self.log.append((self.now, o, from_charger))
                self.in_flight.append((self.now + self.latency_s, o, from_charger))
            else:
                self.events.append((self.now, o))
                self._feed_measurements(o)

    def _feed_measurements(self, ev: object) -> None:
        from drivers.can.events import ChargeRequest

        if self.ideal_charger and isinstance(ev, ChargeRequest):
            current = min(ev.current_a, self.charger.limits.max_current_a)
            self.charger.update_measurements(
                ChargerMeasurements(self.bms.model.voltage_v, current, 0, 0.0)
            )

    def do(self, outs: list[SessionOutput]) -> None:
        self._take(outs, True)

    def run_until(self, t_end: float, stop: Callable[[], bool] | None = None) -> None:
        while self.now < t_end:
            cands = [t_end]
            for d in (self.charger.next_deadline(), self.bms.next_deadline()):
                if d is not None:
                    cands.append(d)
            cands += [t for t, _, _ in self.in_flight]
            self.now = max(self.now, min(cands))
            due = [x for x in self.in_flight if x[0] <= self.now]
            self.in_flight = [x for x in self.in_flight if x[0] > self.now]
            for _, frame, from_charger in due:
                if from_charger:
                    self._take(self.bms.handle_frame(frame, self.now), False)
                else:
                    self._take(self.charger.handle_frame(frame, self.now), True)
            self._take(self.charger.tick(self.now), True)
            self._take(self.bms.tick(self.now), False)
            if stop is not None and stop():
                return

    def phases(self) -> list[Phase]:
        return [e.new for _, e in self.events if isinstance(e, PhaseChanged)]

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for _, e in self.events if isinstance(e, kind)]

    def frames(self, name: str, from_charger: bool | None = None) -> list[tuple[float, CanFrame]]:
        fid = self.charger.codec.frame_id(name)
        return [
            (t, f)
            for t, f, c in self.log
            if f.arbitration_id == fid and (from_charger is None or c == from_charger)
        ]


def make_wire(
    soc_pct: float = 50.0, chemistry: str = "LFP", speed: float = 1.0, **spec: object
) -> Wire:
    model = PackModel(PackSpec(chemistry=chemistry, soc_pct=soc_pct, **spec), speed=speed)  # type: ignore[arg-type]
    return Wire(ChargerSession(LIMITS), BmsCore(model))
