"""Typed events out of the GB/T 27930 charger-side session.

Sign convention: every `current_a` here is positive when current flows INTO the pack. GB/T's own
sign (positive = discharge, -400 A offset) never leaves drivers/can.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    IDLE = "idle"  # not started (no pack docked, or after start() was never called)
    HANDSHAKE = "handshake"  # CHM out, waiting for BHM (insulation check time)
    IDENTIFICATION = "identification"  # CRM 0x00 -> BRM -> CRM 0xAA -> waiting for BCP
    PARAMETERS = "parameters"  # CTS/CML out, BRO in, CRO out, waiting for the first BCL
    CHARGING = "charging"  # BCL/BCS/BSM in, CCS out every 50 ms
    STOPPING = "stopping"  # CST out every 10 ms, waiting for BST then BSD
    STATISTICS = "statistics"  # BSD in, CSD out
    ERROR = "error"  # a timeout: CEM out, output must be off; re-handshake follows
    ENDED = "ended"  # session over; start() begins a new one
    FAILED = "failed"  # re-handshakes exhausted: latched until start() after re-docking


ACTIVE_PHASES = frozenset({Phase.HANDSHAKE, Phase.IDENTIFICATION, Phase.PARAMETERS, Phase.CHARGING})


class StopReason(StrEnum):
    MANUAL = "manual"  # stop() by the station (operator, scheduler, undocking)
    CONDITION_REACHED = "condition_reached"  # a charger-side target (energy, time)
    CHARGER_FAULT = "charger_fault"  # stop() with charger faults (CST fault bits)
    PACK_FAULT = "pack_fault"  # abnormal BSM flag
    BMS_STOP = "bms_stop"  # BST without fault (SOC/voltage target reached)
    BMS_FAULT = "bms_fault"  # BST with a fault bit
    BMS_STOPPED_BY_CHARGER = "bms_acknowledged"  # BST 'charger stopped' answering our CST
    PAUSE_TOO_LONG = "pause_too_long"  # BSM charge-permitted 00 for more than 10 min
    COMM_FAILED = "comm_failed"  # timeouts after three re-handshakes


class ChargerFault(StrEnum):
    """CST fault bits the station can report (SPN3522/3523)."""

    OVER_TEMPERATURE = "CST_ChargerOverTemp"
    CONNECTOR = "CST_ConnectorFault"
    INTERNAL_OVER_TEMPERATURE = "CST_InternalOverTemp"
    ENERGY_UNAVAILABLE = "CST_EnergyUnavailable"
    EMERGENCY_STOP = "CST_EmergencyStop"
    OTHER = "CST_OtherFault"
    CURRENT_MISMATCH = "CST_CurrentMismatch"
    VOLTAGE_ABNORMAL = "CST_VoltageAbnormal"


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    old: Phase
    new: Phase


# GB/T 27930 BRM battery type codes -> the chemistry name a pack announces.
BATTERY_TYPES: dict[int, str] = {
    1: "lead-acid",
    2: "NiMH",
    3: "LFP",
    4: "LMO",
    5: "LCO",
    6: "NMC",
    7: "polymer",
    8: "LTO",
}
BATTERY_TYPE_CODES: dict[str, int] = {name: code for code, name in BATTERY_TYPES.items()}


@dataclass(frozen=True, slots=True)
class PackIdentified:
    """BRM. Text fields are empty when the pack does not send them."""

    protocol_version: int
    battery_type: int
    rated_capacity_ah: float
    rated_voltage_v: float
    manufacturer: str
    pack_serial: int
    production_year: int | None
    production_month: int | None
    production_day: int | None
    cycle_count: int | None
    vehicle_owned: bool | None
    vin: str
    software_version: str
    bms_2011: bool = False  # no BHM seen: a 2011-edition BMS

    @property
    def pack_id(self) -> str:
        """A stable identity: manufacturer + serial (+ VIN when the pack sends one)."""
        base = f"{self.manufacturer or 'PACK'}-{self.pack_serial:08X}"
        return f"{base}-{self.vin}" if self.vin else base

    @property
    def pack_type(self) -> str:
        """The BRM battery type by name (`type-<n>` for a code the table does not have)."""
        return BATTERY_TYPES.get(self.battery_type, f"type-{self.battery_type}")


@dataclass(frozen=True, slots=True)
class PackLimits:
    """BCP."""

    max_cell_voltage_v: float
    max_charge_current_a: float  # positive into the pack
    nominal_energy_kwh: float
    max_charge_voltage_v: float
    max_temperature_c: int
    soc_pct: float
    voltage_v: float


class ChargeMode(StrEnum):
    CONSTANT_VOLTAGE = "cv"
    CONSTANT_CURRENT = "cc"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """BCL."""

    voltage_v: float
    current_a: float  # positive into the pack
    mode: ChargeMode


@dataclass(frozen=True, slots=True)
class PackStatus:
    """BCS."""

    voltage_v: float
    current_a: float  # positive into the pack
    max_cell_voltage_v: float
    max_cell_group: int
    soc_pct: int | None  # None: out of 0-100 (0xFF = not supported), flagged by FieldInvalid
    remaining_min: int


@dataclass(frozen=True, slots=True)
class PackFlags:
    """BSM. Cell and probe numbers are 1-based (raw + 1, per the standard)."""

    max_cell_number: int
    max_temperature_c: int
    max_temperature_probe: int
    min_temperature_c: int
    min_temperature_probe: int
    cell_voltage: str  # normal / too_high / too_low
    soc: str  # normal / too_high / too_low
    over_current: bool
    over_temperature: bool
    insulation_fault: bool
    connector_fault: bool
    charge_permitted: bool

    @property
    def abnormal(self) -> tuple[str, ...]:
        out = []
        if self.cell_voltage != "normal":
            out.append(f"cell_voltage_{self.cell_voltage}")
        if self.soc != "normal":
            out.append(f"soc_{self.soc}")
        for name in ("over_current", "over_temperature", "insulation_fault", "connector_fault"):
            if getattr(self, name):
                out.append(name)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class PackStatistics:
    """BSD."""

    stop_soc_pct: int
    min_cell_voltage_v: float
    max_cell_voltage_v: float
    min_temperature_c: int
    max_temperature_c: int


@dataclass(frozen=True, slots=True)
class CellVoltages:
    """BMV: (voltage_v, group) per cell, cell 1 first."""

    cells: tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class ProbeTemperatures:
    """BMT."""

    temperatures_c: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SessionStopped:
    """Charging stops now (output must go off); the stop handshake (BST/CST, BSD/CSD) follows."""

    reason: StopReason
    detail: str = ""
    faults: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Timeout:
    """An expected message did not arrive in time: CEM is sent naming it, output must go off."""

    missing: str  # BHM, BRM, BCP, BRO, BCL, BCS, BST, BSD
    phase: Phase
    attempt: int  # re-handshakes already used (0..3)
    will_retry: bool


@dataclass(frozen=True, slots=True)
class BmsError:
    """BEM from the pack: it timed out waiting for one of our messages."""

    timeouts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FieldInvalid:
    """A BMS field outside its range that is not a safety stop (those end the session with
    SessionStopped PACK_FAULT): the value is dropped (published as unknown), the session goes on."""

    message: str  # BCS, BCP, BCL, BSM, BSD
    field: str
    value: float
    reason: str


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame or TP payload that could not be used (counted by the bus owner)."""

    kind: str  # "unknown" or "malformed"
    detail: str


SessionEvent = (
    PhaseChanged
    | PackIdentified
    | PackLimits
    | ChargeRequest
    | PackStatus
    | PackFlags
    | PackStatistics
    | CellVoltages
    | ProbeTemperatures
    | SessionStopped
    | Timeout
    | BmsError
    | FieldInvalid
    | FrameRejected
)
