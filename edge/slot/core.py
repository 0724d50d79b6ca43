"""Slot control core, pure: GB/T session events + charger readings + station inputs -> actions.

No I/O and no clock: every input carries `now`, every call returns the actions to carry out, so
each safety reaction leaves in the same call that detected its cause (well inside 100 ms). The
I/O service binds the actions to the charger owner (Modbus or otherwise) and to the CAN link:

- `SetChargerOutput(voltage_v, current_a, enable)`: write it (only issued on a change beyond
  the deadband, or on enable/disable).
- `FeedWatchdog(feed)`: keep (or stop) feeding the charger's communication watchdog.
- `SessionCommand(...)`: call the matching `ChargerLink` method.
- `RaiseAlarm` / `ClearAlarm` (drivers.core.alarm_sink): codes from edge.alarms, component
  "slot", source the slot id.

Safety rules (docs/safety.md), each with a test in tests/edge/test_slot_core.py:
1. Pack fault (abnormal BSM flag, BST with a fault, temperature or cell voltage outside the
   window from BCP and the safety config) -> output off + CST + alarm pack.fault /
   pack.over_temperature / pack.cell_voltage. Latched until the next start (re-docking).
2. BMS timeout (any GB/T timeout, BEM) -> output off (the session sends CEM and re-handshakes);
   alarm pack.bms_timeout; after the third re-handshake fails the slot latches unavailable.
3. Charger offline -> stop feeding its watchdog (it switches itself off), CST, latch
   slot.unavailable until the charger is back and reports its output off (a good reading taken
   after it came back). Then, if the outage cut a session short, `BeginSession`: the service
   starts a new one for a pack still docked and in service. A pack fault or a BMS-lost latch
   that stood before (or arose during) the outage stays; only the offline cause clears.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from drivers.can.events import (
    BmsError,
    ChargeRequest,
    ChargerFault,
    FieldInvalid,
    PackFlags,
    PackIdentified,
    PackLimits,
    PackStatistics,
    PackStatus,
    Phase,
    PhaseChanged,
    SessionEvent,
    SessionStopped,
    StopReason,
    Timeout,
)
from drivers.can.session import ChargerLimits, ChargerMeasurements
from drivers.core.alarm_sink import ClearAlarm, RaiseAlarm
from drivers.core.quality import Quality
from edge.slot.config import SafetyConfig

A_PACK_FAULT = "pack.fault"
A_OVER_TEMPERATURE = "pack.over_temperature"
A_CELL_VOLTAGE = "pack.cell_voltage"
A_BMS_TIMEOUT = "pack.bms_timeout"
A_UNAVAILABLE = "slot.unavailable"
A_CHARGER_OFFLINE = "charger.offline"
A_CHARGER_FAULT = "charger.fault"
A_INVALID_VALUE = "pack.invalid_value"


@dataclass(frozen=True, slots=True)
class ChargerReading:
    """What the charger owner read back. Current positive into the pack."""

    voltage_v: float
    current_a: float
    output_on: bool
    quality: Quality = Quality.GOOD
    fault: bool = False
    energy_kwh: float = 0.0


@dataclass(frozen=True, slots=True)
class ChargerRatings:
    max_voltage_v: float
    min_voltage_v: float
    max_current_a: float
    max_power_kw: float


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetChargerOutput:
    voltage_v: float
    current_a: float
    enable: bool


@dataclass(frozen=True, slots=True)
class FeedWatchdog:
    feed: bool


class SessionCommandKind(StrEnum):
    START = "start"
    STOP = "stop"
    UPDATE_MEASUREMENTS = "update_measurements"
    UPDATE_LIMITS = "update_limits"


@dataclass(frozen=True, slots=True)
class SessionCommand:
    kind: SessionCommandKind
    reason: StopReason = StopReason.MANUAL
    faults: tuple[ChargerFault, ...] = ()
    detail: str = ""
    measurements: ChargerMeasurements | None = None
    limits: ChargerLimits | None = None


@dataclass(frozen=True, slots=True)
class BeginSession:
    """The cause that stopped the session is gone (the charger is back): begin a new one if a
    pack is still docked and the slot in service (the service knows both)."""


Action = SetChargerOutput | FeedWatchdog | RaiseAlarm | ClearAlarm | SessionCommand | BeginSession


class SlotState(StrEnum):
    EMPTY = "empty"  # no session running
    CONNECTING = "connecting"  # handshake/identification/parameters
    CHARGING = "charging"
    PAUSED = "paused"  # BSM charge-permitted 00
    STOPPING = "stopping"
    FAULTED = "faulted"  # pack fault latched until the next start
    UNAVAILABLE = "unavailable"  # latched: BMS lost after 3 re-handshakes, or charger offline


@dataclass(frozen=True, slots=True)
class PackSnapshot:
    """The slot's pack data for the station state. current_a positive into the pack."""

    slot_id: str
    state: SlotState
    phase: Phase
    pack_id: str | None
    identity: PackIdentified | None
    soc_pct: float | None
    voltage_v: float | None
    current_a: float | None
    max_cell_voltage_v: float | None
    max_cell_number: int | None
    min_cell_voltage_v: float | None
    max_temperature_c: int | None
    max_temperature_probe: int | None
    min_temperature_c: int | None
    min_temperature_probe: int | None
    request_voltage_v: float | None
    request_current_a: float | None
    limits: PackLimits | None
    setpoint_current_a: float
    output_enabled: bool
    heartbeat_age_s: float | None
    alarms: tuple[str, ...]


@dataclass
class _Pack:
    identity: PackIdentified | None = None
    limits: PackLimits | None = None
    request: ChargeRequest | None = None
    status: PackStatus | None = None
    flags: PackFlags | None = None
    stats: PackStatistics | None = None
    last_heard: float | None = None
    invalid_fields: int = 0


@dataclass
class _Output:
    voltage_v: float = 0.0
    current_a: float = 0.0
    enable: bool = False
    written: bool = False


@dataclass
class SlotCore:
    """Decisions for one slot. Every method returns the actions to carry out now."""

    slot_id: str
    ratings: ChargerRatings
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    current_deadband_a: float = 1.0  # a setpoint change smaller than these is not written
    voltage_deadband_v: float = 1.0
    grant_kw: float = 0.0  # pack-side (edge.power): the scheduler's grid-side grant x efficiency
    derating: float = 1.0  # charger temperature derating, 0..1
    # The request (pack-side kW) as the scheduler last read it (`slot_input`): a grant is sized
    # at most at this, so a request that rose since then needs a new allocation.
    scheduled_request_kw: float = 0.0
    charger_online: bool = True
    state: SlotState = SlotState.EMPTY
    phase: Phase = Phase.IDLE
    reading: ChargerReading | None = None
    _pack: _Pack = field(default_factory=_Pack)
    _out: _Output = field(default_factory=_Output)
    _alarms: set[str] = field(default_factory=set)
    _unavailable_reason: str = ""
    _feeding: bool = True
    # What the slot returns to once its offline charger is back (a pack-fault latch survives
    # the outage), and whether the outage cut a session short (then a new one begins).
    _after_offline: SlotState = SlotState.EMPTY
    _resume_after_offline: bool = False
    # Reasons the output must stay off whatever the session asks ("reserved" by a swap, "estop").
    _inhibit: set[str] = field(default_factory=set)

    # -- commands ------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """A pack is docked in the slot: begin a session (clears a pack-fault latch)."""
        acts: list[Action] = []
        if self.state is SlotState.UNAVAILABLE:
            if self._unavailable_reason == "charger offline":
                # a pack docked during the outage: its session begins once the charger is back
                self._after_offline, self._resume_after_offline = SlotState.EMPTY, True
            return acts
        self._pack = _Pack()
        for code in (
            A_PACK_FAULT,
            A_OVER_TEMPERATURE,
            A_CELL_VOLTAGE,
            A_BMS_TIMEOUT,
            A_INVALID_VALUE,
        ):
            self._clear(code, acts)
        self.state = SlotState.CONNECTING
        acts.append(SessionCommand(SessionCommandKind.UPDATE_LIMITS, limits=self._cml()))
        acts.append(SessionCommand(SessionCommandKind.START))
        return acts

    def stop(self, now: float, reason: StopReason = StopReason.MANUAL) -> list[Action]:
        acts: list[Action] = []
        self._output_off(acts)
        acts.append(SessionCommand(SessionCommandKind.STOP, reason=reason))
        return acts

    def set_grant(self, power_kw: float, now: float) -> list[Action]:
        self.grant_kw = max(0.0, power_kw)
        return self._regulate()

    def set_derating(self, factor: float, now: float) -> list[Action]:
        self.derating = max(0.0, min(1.0, factor))
        acts = [SessionCommand(SessionCommandKind.UPDATE_LIMITS, limits=self._cml())]
        return acts + self._regulate()

    def set_ratings(self, ratings: ChargerRatings, now: float) -> list[Action]:
        self.ratings = ratings
        acts = [SessionCommand(SessionCommandKind.UPDATE_LIMITS, limits=self._cml())]
        return acts + self._regulate()

    def inhibit(self, reason: str, now: float) -> list[Action]:
        """Hold the output off for `reason` (a swap reserved the slot, an e-stop) until
        `release(reason)`: output off now, and no enable while any reason stands."""
        self._inhibit.add(reason)
        acts: list[Action] = []
        self._output_off(acts)
        return acts

    def release(self, reason: str, now: float) -> list[Action]:
        self._inhibit.discard(reason)
        return self._regulate()

    @property
    def inhibited(self) -> frozenset[str]:
        return frozenset(self._inhibit)

    def force_off(self, now: float) -> list[Action]:
        """Start again from "off" (a restarted service): forget what was last written."""
        self._out = _Output()
        acts: list[Action] = []
        self._write(acts, 0.0, 0.0, False, force=True)
        return acts

    # -- charger side --------------------------------------------------------------------------

    def set_charger_online(self, online: bool, now: float) -> list[Action]:
        acts: list[Action] = []
        if online == self.charger_online:
            return acts
        self.charger_online = online
        if not online:
            # Rule 3: it cannot be written to; starve its watchdog so it switches itself off.
            self._feeding = False
            acts.append(FeedWatchdog(False))
            self._out = _Output(written=True)  # whatever it had is going off by itself
            acts.append(
                SessionCommand(
                    SessionCommandKind.STOP,
                    reason=StopReason.CHARGER_FAULT,
                    faults=(ChargerFault.OTHER,),
                    detail="charger offline",
                )
            )
            self._raise(A_CHARGER_OFFLINE, "charger not answering", acts)
            # Only a reading taken after it is back may release the latch.
            self.reading = None
            if self.state is not SlotState.UNAVAILABLE:  # a BMS-lost latch keeps its own reason
                self._after_offline = (
                    SlotState.FAULTED if self.state is SlotState.FAULTED else SlotState.EMPTY
                )
                self._resume_after_offline = self.state in (
                    SlotState.CONNECTING,
                    SlotState.CHARGING,
                    SlotState.PAUSED,
                )
                self._latch_unavailable("charger offline", acts)
        else:
            self._maybe_release(acts)
        return acts

    def on_reading(self, reading: ChargerReading, now: float) -> list[Action]:
        acts: list[Action] = []
        self.reading = reading
        if reading.quality is Quality.GOOD:
            acts.append(
                SessionCommand(
                    SessionCommandKind.UPDATE_MEASUREMENTS,
                    measurements=ChargerMeasurements(
                        voltage_v=reading.voltage_v,
                        current_a=reading.current_a,
                        energy_kwh=reading.energy_kwh,
                    ),
                )
            )
        if reading.fault and A_CHARGER_FAULT not in self._alarms:
            self._output_off(acts)
            self._raise(A_CHARGER_FAULT, "charger reports a fault", acts)
            acts.append(
                SessionCommand(
                    SessionCommandKind.STOP,
                    reason=StopReason.CHARGER_FAULT,
                    faults=(ChargerFault.OTHER,),
                )
            )
        elif not reading.fault:
            self._clear(A_CHARGER_FAULT, acts)
        self._maybe_release(acts)
        return acts

    def _maybe_release(self, acts: list[Action]) -> None:
        """Charger offline: once it is online and a good reading shows its output off, feed it
        again; the offline latch (only that one) clears, and a cut-short session begins again."""
        r = self.reading
        if (
            self._feeding
            or not self.charger_online
            or r is None
            or r.quality is not Quality.GOOD
            or r.output_on
        ):
            return
        self._clear(A_CHARGER_OFFLINE, acts)
        self._feeding = True
        acts.append(FeedWatchdog(True))
        self._out = _Output()
        self._write(acts, 0.0, 0.0, False, force=True)
        if self.state is SlotState.UNAVAILABLE and self._unavailable_reason == "charger offline":
            self._clear(A_UNAVAILABLE, acts)
            self._unavailable_reason = ""
            self.state = self._after_offline
            if self.state is SlotState.EMPTY and self._resume_after_offline:
                acts.append(BeginSession())
        self._after_offline, self._resume_after_offline = SlotState.EMPTY, False

    # -- session side --------------------------------------------------------------------------

    def on_session_event(self, ev: SessionEvent, now: float) -> list[Action]:
        acts: list[Action] = []
        p = self._pack
        if isinstance(ev, PhaseChanged):
            self.phase = ev.new
            if ev.new is Phase.CHARGING:
                if self.state not in (SlotState.FAULTED, SlotState.UNAVAILABLE):
                    self.state = SlotState.CHARGING
                self._clear(A_BMS_TIMEOUT, acts)
            elif ev.old is Phase.CHARGING:
                self._output_off(acts)
            if ev.new in (Phase.ENDED, Phase.IDLE) and self.state not in (
                SlotState.FAULTED,
                SlotState.UNAVAILABLE,
            ):
                self.state = SlotState.EMPTY
            if ev.new is Phase.FAILED:
                self._latch_unavailable("BMS lost after three re-handshakes", acts)
            return acts
        p.last_heard = now
        if isinstance(ev, FieldInvalid):
            # Dropped at the session boundary; alarmed once per docking, the session goes on.
            p.invalid_fields += 1
            self._raise(A_INVALID_VALUE, f"{ev.message} {ev.field}={ev.value:g}: {ev.reason}", acts)
            return acts
        if isinstance(ev, PackIdentified):
            p.identity = ev
        elif isinstance(ev, PackLimits):
            p.limits = ev
        elif isinstance(ev, ChargeRequest):
            p.request = ev
            return self._regulate()
        elif isinstance(ev, PackStatus):
            p.status = ev
            self._check_cell_voltage(ev.max_cell_voltage_v, None, acts)
        elif isinstance(ev, PackFlags):
            p.flags = ev
            if ev.abnormal:
                code = A_OVER_TEMPERATURE if ev.over_temperature else A_PACK_FAULT
                if ev.cell_voltage != "normal":
                    code = A_CELL_VOLTAGE
                self._pack_fault(code, ",".join(ev.abnormal), acts)
                return acts
            self._check_temperature(ev, acts)
            if self.state is SlotState.CHARGING and not ev.charge_permitted:
                self.state = SlotState.PAUSED
            elif self.state is SlotState.PAUSED and ev.charge_permitted:
                self.state = SlotState.CHARGING
            acts += self._regulate()
        elif isinstance(ev, PackStatistics):
            p.stats = ev
            self._check_cell_voltage(ev.max_cell_voltage_v, ev.min_cell_voltage_v, acts)
        elif isinstance(ev, SessionStopped):
            self._output_off(acts)
            if ev.reason in (StopReason.PACK_FAULT, StopReason.BMS_FAULT):
                code = A_PACK_FAULT
                if any("temperature" in f for f in ev.faults):
                    code = A_OVER_TEMPERATURE
                elif any("voltage" in f for f in ev.faults):
                    code = A_CELL_VOLTAGE
                self._pack_fault(code, ev.detail or ev.reason.value, acts)
            elif ev.reason is StopReason.COMM_FAILED:
                self._latch_unavailable("BMS lost after three re-handshakes", acts)
            elif self.state not in (SlotState.FAULTED, SlotState.UNAVAILABLE):
                self.state = SlotState.STOPPING
        elif isinstance(ev, (Timeout, BmsError)):
            # Rule 2: output off now; the session sends CEM and re-handshakes.
            self._output_off(acts)
            what = ev.missing if isinstance(ev, Timeout) else "BEM " + ",".join(ev.timeouts)
            self._raise(A_BMS_TIMEOUT, f"{what} timeout", acts)
            if isinstance(ev, Timeout) and not ev.will_retry and ev.phase is not Phase.STOPPING:
                self._latch_unavailable("BMS lost after three re-handshakes", acts)
        return acts

    def tick(self, now: float) -> list[Action]:
        """Periodic re-check (nothing time-based here yet beyond what events carry)."""
        return self._regulate()

    # -- safety checks -------------------------------------------------------------------------

    def _check_temperature(self, flags: PackFlags, acts: list[Action]) -> None:
        s = self.safety
        limit = s.max_pack_temp_c
        if self._pack.limits is not None:
            limit = min(limit, self._pack.limits.max_temperature_c)
        if flags.max_temperature_c > limit:
            self._pack_fault(
                A_OVER_TEMPERATURE,
                f"{flags.max_temperature_c} degC at probe {flags.max_temperature_probe} > {limit}",
                acts,
            )
        elif flags.min_temperature_c < s.min_pack_temp_c and self._charging():
            self._pack_fault(
                A_OVER_TEMPERATURE,
                f"{flags.min_temperature_c} degC < {s.min_pack_temp_c}: too cold to charge",
                acts,
            )

    def _check_cell_voltage(
        self, max_cell_v: float, min_cell_v: float | None, acts: list[Action]
    ) -> None:
        s = self.safety
        limit = s.max_cell_voltage_v
        if self._pack.limits is not None:
            limit = min(limit, self._pack.limits.max_cell_voltage_v)
        if max_cell_v > limit + s.cell_voltage_margin_v:
            self._pack_fault(A_CELL_VOLTAGE, f"max cell {max_cell_v:.2f} V > {limit:.2f} V", acts)
        elif min_cell_v is not None and min_cell_v < s.min_cell_voltage_v:
            self._pack_fault(
                A_CELL_VOLTAGE, f"min cell {min_cell_v:.2f} V < {s.min_cell_voltage_v} V", acts
            )

    def _pack_fault(self, code: str, detail: str, acts: list[Action]) -> None:
        # Rule 1: output off, CST, alarm - all in this same call.
        self._output_off(acts)
        if self.state is not SlotState.FAULTED:
            acts.append(
                SessionCommand(SessionCommandKind.STOP, reason=StopReason.PACK_FAULT, detail=detail)
            )
        self._raise(code, detail, acts)
        if self._unavailable_reason == "charger offline":
            self._after_offline = SlotState.FAULTED  # still latched once the charger is back
        elif self.state is not SlotState.UNAVAILABLE:
            self.state = SlotState.FAULTED

    def _latch_unavailable(self, reason: str, acts: list[Action]) -> None:
        self._output_off(acts)
        if self.state is SlotState.UNAVAILABLE and self._unavailable_reason == "charger offline":
            if reason != "charger offline":
                self._unavailable_reason = reason  # BMS lost: stays for reset_slot
            return
        self.state = SlotState.UNAVAILABLE
        self._unavailable_reason = reason
        self._raise(A_UNAVAILABLE, reason, acts)

    def reset_unavailable(self, now: float) -> list[Action]:
        """Operator reset after a BMS-lost latch (re-plug). Charger-offline latches clear alone."""
        acts: list[Action] = []
        if self.state is SlotState.UNAVAILABLE and self._unavailable_reason != "charger offline":
            self.state = SlotState.EMPTY
            self._unavailable_reason = ""
            self._clear(A_UNAVAILABLE, acts)
        return acts

    # -- regulation ----------------------------------------------------------------------------

    def _charging(self) -> bool:
        return self.phase is Phase.CHARGING

    def setpoint(self) -> tuple[float, float]:
        """(voltage_v, current_a) = min of request, pack limits, ratings, grant and derating."""
        p = self._pack
        r = self.ratings
        if p.request is None:
            return 0.0, 0.0
        voltage = min(p.request.voltage_v, r.max_voltage_v)
        current = min(p.request.current_a, r.max_current_a * self.derating)
        if p.limits is not None:
            voltage = min(voltage, p.limits.max_charge_voltage_v)
            current = min(current, p.limits.max_charge_current_a)
        # Power limits act on the pack's present voltage (the charger output follows it); with
        # no voltage known at all the power limits cannot be applied: no current.
        v_now = self._pack_voltage() or voltage
        if v_now > 0:
            current = min(current, self.grant_kw * 1000.0 / v_now)
            current = min(current, r.max_power_kw * self.derating * 1000.0 / v_now)
        else:
            current = 0.0
        return round(max(0.0, voltage), 1), round(max(0.0, current), 1)

    @staticmethod
    def enable_allowed(voltage_v: float, current_a: float) -> bool:
        """Seam (issue 12 item 7): no enable without a positive voltage and current setpoint."""
        return voltage_v > 0.0 and current_a > 0.0

    def request_kw(self) -> float:
        """The BMS request (BCL current x pack voltage) as pack-side kW, at the voltage the
        setpoint divides power limits by, so a grant of exactly this power gives exactly the
        requested current."""
        p = self._pack
        if p.request is None:
            return 0.0
        v_now = self._pack_voltage() or p.request.voltage_v
        return max(0.0, p.request.current_a) * max(0.0, v_now) / 1000.0

    def grant_binds(self) -> bool:
        """The grant holds the output below what the request and the other limits allow (by
        more than half the current deadband), and the request rose since the scheduler last
        read it by more than 0.5 % (above the charger's voltage reading noise, which moves the
        request's kW; a grant the policy holds below the request then asks once per rise, not
        at every reading): the station asks for a new allocation at once rather than at the
        next period (the grant stays the cap; the scheduler decides)."""
        p = self._pack
        if p.request is None or not self._charging() or self.state is not SlotState.CHARGING:
            return False
        if self.request_kw() <= self.scheduled_request_kw * 1.005 + 1e-3:
            return False
        _, granted = self.setpoint()
        grant, self.grant_kw = self.grant_kw, math.inf
        try:
            _, unlimited = self.setpoint()
        finally:
            self.grant_kw = grant
        return granted < unlimited - self.current_deadband_a / 2

    def _pack_voltage(self) -> float | None:
        r = self.reading
        if r is not None and r.quality is Quality.GOOD and r.voltage_v > 0:
            return r.voltage_v
        if self._pack.status is not None:
            return self._pack.status.voltage_v
        return None

    def _regulate(self) -> list[Action]:
        acts: list[Action] = []
        flags = self._pack.flags
        allowed = (
            self.state is SlotState.CHARGING
            and self.phase is Phase.CHARGING
            and self.charger_online
            and (flags is None or flags.charge_permitted)
            and self._pack.request is not None
            and not self._inhibit
        )
        if not allowed:
            if self._out.enable:
                self._output_off(acts)
            return acts
        voltage, current = self.setpoint()
        enable = self.enable_allowed(voltage, current)
        if not enable:
            current = 0.0
        self._write(acts, voltage, current, enable)
        return acts

    def _write(
        self, acts: list[Action], voltage: float, current: float, enable: bool, force: bool = False
    ) -> None:
        o = self._out
        changed = (
            force
            or not o.written
            or enable != o.enable
            or abs(current - o.current_a) > self.current_deadband_a
            or abs(voltage - o.voltage_v) > self.voltage_deadband_v
        )
        if not changed:
            return
        if not self._feeding:
            return  # an offline charger cannot be written; its watchdog turns it off
        self._out = _Output(voltage, current, enable, True)
        acts.append(SetChargerOutput(voltage, current, enable))

    def _output_off(self, acts: list[Action]) -> None:
        if self._out.written and not self._out.enable and self._out.current_a == 0.0:
            return
        self._write(acts, 0.0, 0.0, False, force=True)

    def _cml(self) -> ChargerLimits:
        r = self.ratings
        return ChargerLimits(
            max_voltage_v=r.max_voltage_v,
            min_voltage_v=r.min_voltage_v,
            max_current_a=round(r.max_current_a * self.derating, 1),
        )

    # -- alarms / snapshot ---------------------------------------------------------------------

    def _raise(self, code: str, detail: str, acts: list[Action]) -> None:
        if code not in self._alarms:
            self._alarms.add(code)
            acts.append(RaiseAlarm(code, self.slot_id, detail))

    def _clear(self, code: str, acts: list[Action]) -> None:
        if code in self._alarms:
            self._alarms.discard(code)
            acts.append(ClearAlarm(code, self.slot_id))

    def snapshot(self, now: float) -> PackSnapshot:
        p = self._pack
        st, fl = p.status, p.flags
        r = self.reading
        current = st.current_a if st is not None else None
        if r is not None and r.quality is Quality.GOOD and self.phase is Phase.CHARGING:
            current = r.current_a
        return PackSnapshot(
            slot_id=self.slot_id,
            state=self.state,
            phase=self.phase,
            pack_id=p.identity.pack_id if p.identity else None,
            identity=p.identity,
            soc_pct=(
                float(st.soc_pct)
                if st and st.soc_pct is not None
                else (p.limits.soc_pct if p.limits else None)
            ),
            voltage_v=st.voltage_v if st else (p.limits.voltage_v if p.limits else None),
            current_a=current,
            max_cell_voltage_v=st.max_cell_voltage_v if st else None,
            max_cell_number=fl.max_cell_number if fl else None,
            min_cell_voltage_v=p.stats.min_cell_voltage_v if p.stats else None,
            max_temperature_c=fl.max_temperature_c if fl else None,
            max_temperature_probe=fl.max_temperature_probe if fl else None,
            min_temperature_c=fl.min_temperature_c if fl else None,
            min_temperature_probe=fl.min_temperature_probe if fl else None,
            request_voltage_v=p.request.voltage_v if p.request else None,
            request_current_a=p.request.current_a if p.request else None,
            limits=p.limits,
            setpoint_current_a=self._out.current_a,
            output_enabled=self._out.enable,
            heartbeat_age_s=None if p.last_heard is None else max(0.0, now - p.last_heard),
            alarms=tuple(sorted(self._alarms)),
        )
