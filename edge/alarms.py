"""The alarm catalogue and the active set.

One catalogue: every alarm the station can raise, with its severity, text and the one component
allowed to raise (and so to clear) it. Components get a `Raiser` bound to their name; a raiser
cannot touch another component's alarms, so only the raiser clears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from drivers.core.clock import Clock


class Severity(StrEnum):
    CRITICAL = "critical"  # safety: motion halted or outputs forced off
    MAJOR = "major"  # a device or slot out of service
    MINOR = "minor"  # degraded, the station carries on
    WARNING = "warning"


class AlarmCode(StrEnum):
    """Every alarm code of the catalogue below (one definition each)."""

    SERVICE_RESTARTING = "service.restarting"
    STATION_LOOP_LAG = "station.loop_lag"
    CLOCK_UNSYNCHRONISED = "clock.unsynchronised"
    MODBUS_OFFLINE = "modbus.offline"
    MODBUS_WRITE_FAILED = "modbus.write_failed"
    MODBUS_INVALID_VALUE = "modbus.invalid_value"
    CAN_BUS_ERROR = "can.bus_error"
    PACK_FAULT = "pack.fault"
    PACK_OVER_TEMPERATURE = "pack.over_temperature"
    PACK_CELL_VOLTAGE = "pack.cell_voltage"
    PACK_BMS_TIMEOUT = "pack.bms_timeout"
    SLOT_UNAVAILABLE = "slot.unavailable"
    PACK_INVALID_VALUE = "pack.invalid_value"
    CHARGER_OFFLINE = "charger.offline"
    CHARGER_FAULT = "charger.fault"
    CHARGER_OUTPUT_OFF_UNCONFIRMED = "charger.output_off_unconfirmed"
    SLOT_EVENT_LOST = "slot.event_lost"
    SAFETY_EMERGENCY_STOP = "safety.emergency_stop"
    ROBOT_STEP_FAULT = "robot.step_fault"
    ROBOT_STEP_TIMEOUT = "robot.step_timeout"
    ROBOT_INTERLOCK_LOST = "robot.interlock_lost"
    ROBOT_PLC_OFFLINE = "robot.plc_offline"
    ROBOT_PLC_STALE = "robot.plc_stale"
    SWAP_EVENT_LOST = "swap.event_lost"
    SWAP_PACK_MISMATCH = "swap.pack_mismatch"
    INVENTORY_INCONSISTENT = "inventory.inconsistent"
    ROBOT_PLC_RESTARTED = "robot.plc_restarted"
    OUTBOX_OVERFLOW = "outbox.overflow"


@dataclass(frozen=True, slots=True)
class AlarmDef:
    code: AlarmCode
    severity: Severity
    component: str
    text: str


_DEFS = [
    # foundation
    AlarmDef(
        AlarmCode.SERVICE_RESTARTING,
        Severity.MINOR,
        "station",
        "A device service failed and is being restarted",
    ),
    AlarmDef(
        AlarmCode.STATION_LOOP_LAG, Severity.WARNING, "station", "Event loop lag above threshold"
    ),
    AlarmDef(
        AlarmCode.CLOCK_UNSYNCHRONISED,
        Severity.MINOR,
        "station",
        "System clock not synchronised: command expiry, dedupe and tariffs may be off",
    ),
    # Modbus devices
    AlarmDef(
        AlarmCode.MODBUS_OFFLINE,
        Severity.MAJOR,
        "modbus",
        "Modbus device not answering (communication fault)",
    ),
    AlarmDef(
        AlarmCode.MODBUS_WRITE_FAILED,
        Severity.MAJOR,
        "modbus",
        "Modbus write not confirmed by read-back",
    ),
    AlarmDef(
        AlarmCode.MODBUS_INVALID_VALUE,
        Severity.WARNING,
        "modbus",
        "Modbus device returned invalid register values",
    ),
    # CAN buses
    AlarmDef(AlarmCode.CAN_BUS_ERROR, Severity.MAJOR, "can", "CAN bus error or bus-off; reopening"),
    # Slots and packs (slot controller)
    AlarmDef(
        AlarmCode.PACK_FAULT, Severity.CRITICAL, "slot", "Pack reports a fault; slot output off"
    ),
    AlarmDef(
        AlarmCode.PACK_OVER_TEMPERATURE, Severity.CRITICAL, "slot", "Pack temperature out of window"
    ),
    AlarmDef(AlarmCode.PACK_CELL_VOLTAGE, Severity.CRITICAL, "slot", "Cell voltage out of window"),
    AlarmDef(
        AlarmCode.PACK_BMS_TIMEOUT,
        Severity.MAJOR,
        "slot",
        "BMS silent or protocol timeout; slot output off",
    ),
    AlarmDef(AlarmCode.SLOT_UNAVAILABLE, Severity.MAJOR, "slot", "Slot latched unavailable"),
    AlarmDef(
        AlarmCode.PACK_INVALID_VALUE,
        Severity.MINOR,
        "slot",
        "Pack reported a value out of range (dropped, session goes on)",
    ),
    AlarmDef(
        AlarmCode.CHARGER_OFFLINE,
        Severity.MAJOR,
        "slot",
        "Charger offline; its watchdog stops its output",
    ),
    AlarmDef(AlarmCode.CHARGER_FAULT, Severity.MAJOR, "slot", "Charger reports a fault"),
    AlarmDef(
        AlarmCode.CHARGER_OUTPUT_OFF_UNCONFIRMED,
        Severity.CRITICAL,
        "slot",
        "Charger output off not confirmed by a read after the command; retrying, watchdog starved",
    ),
    AlarmDef(
        AlarmCode.SLOT_EVENT_LOST,
        Severity.MINOR,
        "slot",
        "Slot event not stored (event sink failed)",
    ),
    # Swap robot
    AlarmDef(
        AlarmCode.SAFETY_EMERGENCY_STOP,
        Severity.CRITICAL,
        "swap",
        "Emergency stop: robot halted, outputs off, latched",
    ),
    AlarmDef(AlarmCode.ROBOT_STEP_FAULT, Severity.MAJOR, "swap", "Robot step failed"),
    AlarmDef(
        AlarmCode.ROBOT_STEP_TIMEOUT, Severity.MAJOR, "swap", "Robot step exceeded its timeout"
    ),
    AlarmDef(
        AlarmCode.ROBOT_INTERLOCK_LOST,
        Severity.CRITICAL,
        "swap",
        "Interlock lost during a step; unit halted",
    ),
    AlarmDef(AlarmCode.ROBOT_PLC_OFFLINE, Severity.CRITICAL, "swap", "Robot PLC not answering"),
    AlarmDef(
        AlarmCode.ROBOT_PLC_STALE,
        Severity.CRITICAL,
        "swap",
        "Robot PLC heartbeat frozen or status too old; units halted",
    ),
    AlarmDef(
        AlarmCode.SWAP_EVENT_LOST,
        Severity.MINOR,
        "swap",
        "Swap event not stored (event sink failed)",
    ),
    AlarmDef(
        AlarmCode.SWAP_PACK_MISMATCH,
        Severity.MAJOR,
        "swap",
        "Docked pack identity differs from the announced one",
    ),
    AlarmDef(
        AlarmCode.INVENTORY_INCONSISTENT,
        Severity.CRITICAL,
        "swap",
        "Inventory invariant broken; operator action needed",
    ),
    AlarmDef(
        AlarmCode.ROBOT_PLC_RESTARTED,
        Severity.CRITICAL,
        "swap",
        "Robot PLC lost its command counter (restarted); commands not resent, swap held",
    ),
    # Telemetry
    AlarmDef(
        AlarmCode.OUTBOX_OVERFLOW,
        Severity.MINOR,
        "telemetry",
        "Outbox disk cap reached; oldest events dropped",
    ),
]

CATALOGUE: dict[str, AlarmDef] = {d.code: d for d in _DEFS}


class UnknownAlarmError(KeyError):
    pass


class AlarmOwnershipError(PermissionError):
    pass


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    code: str
    source: str
    severity: Severity
    text: str
    detail: str
    raised_at: datetime


@dataclass(frozen=True, slots=True)
class AlarmChange:
    raised: bool
    alarm: ActiveAlarm


AlarmListener = Callable[[AlarmChange], None]


class AlarmManager:
    """The station's active alarms. Listeners see every raise and clear (events, telemetry)."""

    def __init__(self, clock: Clock, catalogue: dict[str, AlarmDef] | None = None) -> None:
        self._clock = clock
        self._catalogue = catalogue or CATALOGUE
        self._active: dict[tuple[str, str], ActiveAlarm] = {}
        self._listeners: list[AlarmListener] = []
        self.raised_total = 0

    def subscribe(self, listener: AlarmListener) -> None:
        self._listeners.append(listener)

    def raiser(self, component: str) -> Raiser:
        return Raiser(self, component)

    @property
    def active(self) -> list[ActiveAlarm]:
        return sorted(self._active.values(), key=lambda a: (a.raised_at, a.code, a.source))

    def is_active(self, code: str, source: str | None = None) -> bool:
        if source is not None:
            return (code, source) in self._active
        return any(c == code for c, _ in self._active)

    def _definition(self, code: str, component: str) -> AlarmDef:
        try:
            d = self._catalogue[code]
        except KeyError:
            raise UnknownAlarmError(code) from None
        if d.component != component:
            raise AlarmOwnershipError(f"{component!r} may not raise or clear {code!r}")
        return d

    def _raise(self, component: str, code: str, source: str, detail: str) -> None:
        d = self._definition(code, component)
        if (code, source) in self._active:
            return
        a = ActiveAlarm(code, source, d.severity, d.text, detail, self._clock.now())
        self._active[(code, source)] = a
        self.raised_total += 1
        self._notify(AlarmChange(True, a))

    def _clear(self, component: str, code: str, source: str) -> None:
        self._definition(code, component)
        a = self._active.pop((code, source), None)
        if a is not None:
            self._notify(AlarmChange(False, a))

    def _notify(self, change: AlarmChange) -> None:
        for listener in self._listeners:
            listener(change)


class Raiser:
    """An `AlarmSink` bound to one component: it raises and clears only that component's codes."""

    __slots__ = ("_mgr", "component")

    def __init__(self, mgr: AlarmManager, component: str) -> None:
        self._mgr = mgr
        self.component = component

    def raise_alarm(self, code: str, source: str, detail: str = "") -> None:
        self._mgr._raise(self.component, code, source, detail)

    def clear_alarm(self, code: str, source: str) -> None:
        self._mgr._clear(self.component, code, source)
