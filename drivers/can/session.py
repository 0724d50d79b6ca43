"""GB/T 27930-2015 charger-side session, sans-I/O.

`ChargerSession` plays the charger's part of the protocol for one slot. It never reads a clock:
`handle_frame(frame, now)`, `tick(now)` and the commands take the time and return outputs:
`CanFrame`s to put on the bus and typed events (drivers.can.events). The runner calls `tick`
at `next_deadline()`; periodic messages are scheduled on their own grid (CCS every 50 ms) so a
late wake-up does not drift the period.

Phases and timeouts follow docs/gbt27930.md: handshake (CHM/BHM, BHM missing 5 s -> treat the
pack as a 2011 BMS and go on), identification (CRM 0x00, BRM 5 s, CRM 0xAA, BCP 5 s),
parameters (CTS/CML, BRO 5 s / BRO 0xAA 60 s, CRO), charging (BCL 1 s, BCS 5 s, CCS out every
50 ms, BSM pause/stop), stop (CST every 10 ms, BST 5 s, BSD 10 s) and statistics (CSD). A
communication timeout sends CEM for `error_hold_s`, then re-handshakes from CRM 0x00; after
three re-handshakes the next timeout ends in FAILED (the slot latches unavailable). The retry
count is per start() (per docking), so a pack that keeps dropping out cannot loop forever.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from drivers.can.codec import (
    BMS_ADDR,
    CHARGER_ADDR,
    PGN_BMT,
    PGN_BMV,
    PGN_BSP,
    CanFrame,
    CodecError,
    Decoded,
    GbtCodec,
    Signals,
    brm_text_fields,
    cts_signals,
    decode_bmt,
    decode_bmv,
    default_codec,
    id_fields,
)
from drivers.can.events import (
    ACTIVE_PHASES,
    BmsError,
    CellVoltages,
    ChargeMode,
    ChargeRequest,
    ChargerFault,
    FieldInvalid,
    FrameRejected,
    PackFlags,
    PackIdentified,
    PackLimits,
    PackStatistics,
    PackStatus,
    Phase,
    PhaseChanged,
    ProbeTemperatures,
    SessionEvent,
    SessionStopped,
    StopReason,
    Timeout,
)
from drivers.can.j1939 import MessageReceived, TransferAborted, TransferSent, TransportSession

SessionOutput = CanFrame | SessionEvent

PROTOCOL_V11 = 0x000101
RECOGNISED = 0xAA
NOT_RECOGNISED = 0x00
READY = 0xAA
NOT_READY = 0x00

# CEM signal per missing message (docs/gbt27930.md, CEM)
CEM_SIGNAL = {
    "BRM": "CEM_BRMTimeout",
    "BCP": "CEM_BCPTimeout",
    "BRO": "CEM_BROTimeout",
    "BCS": "CEM_BCSTimeout",
    "BCL": "CEM_BCLTimeout",
    "BST": "CEM_BSTTimeout",
    "BSD": "CEM_BSDTimeout",
}
_CEM_ZERO: Signals = dict.fromkeys(CEM_SIGNAL.values(), 0)
_BEM_NAMES = {
    "BEM_CRM00Timeout": "CRM00",
    "BEM_CRMAATimeout": "CRMAA",
    "BEM_CTSCMLTimeout": "CTS/CML",
    "BEM_CROTimeout": "CRO",
    "BEM_CCSTimeout": "CCS",
    "BEM_CSTTimeout": "CST",
    "BEM_CSDTimeout": "CSD",
}
_CST_ZERO: Signals = {
    "CST_ConditionReached": 0,
    "CST_ManualStop": 0,
    "CST_FaultStop": 0,
    "CST_BMSStopped": 0,
    **{f.value: 0 for f in ChargerFault},
}
_BST_FAULTS = {
    "BST_InsulationFault": "insulation",
    "BST_ConnectorOverTemp": "connector_over_temperature",
    "BST_ComponentOverTemp": "component_over_temperature",
    "BST_ConnectorFault": "connector",
    "BST_PackOverTemp": "pack_over_temperature",
    "BST_HVRelayFault": "hv_relay",
    "BST_DetectionPoint2Fault": "detection_point_2",
    "BST_OtherFault": "other",
    "BST_OverCurrent": "over_current",
    "BST_VoltageAbnormal": "voltage_abnormal",
}
_BST_REASONS = {
    "BST_SOCTargetReached": "soc_target_reached",
    "BST_VoltageSetpointReached": "voltage_setpoint_reached",
    "BST_CellVoltageSetpointReached": "cell_voltage_setpoint_reached",
    "BST_ChargerStopped": "charger_stopped",
}
_LEVEL = {0: "normal", 1: "too_high", 2: "too_low"}
SOC_RANGE = (0, 100)  # GB/T fills an unsupported SOC with 0xFF


@dataclass(frozen=True, slots=True)
class SessionTimers:
    """Periods and limits in seconds (docs/gbt27930.md, "Timers")."""

    chm_period_s: float = 0.25
    crm_period_s: float = 0.25
    cts_period_s: float = 0.5
    cml_period_s: float = 0.25
    cro_period_s: float = 0.25
    ccs_period_s: float = 0.05
    cst_period_s: float = 0.01
    csd_period_s: float = 0.25
    cem_period_s: float = 0.25
    bhm_timeout_s: float = 5.0
    brm_timeout_s: float = 5.0
    bcp_timeout_s: float = 5.0
    bro_timeout_s: float = 5.0
    bro_ready_timeout_s: float = 60.0
    first_bcl_timeout_s: float = 5.0
    bcl_timeout_s: float = 1.0
    bcs_timeout_s: float = 5.0
    bst_timeout_s: float = 5.0
    bsd_timeout_s: float = 10.0
    pause_limit_s: float = 600.0
    error_hold_s: float = 1.0  # CEM is repeated this long before the re-handshake
    csd_repeats: int = 4
    max_rehandshakes: int = 3


@dataclass(frozen=True, slots=True)
class PackFieldLimits:
    """The station's safety window for what a BMS reports (config `safety`); the pack's own BCP
    limits tighten it. Values outside it stop the session at the boundary (CST, PACK_FAULT)."""

    max_temperature_c: float = 60.0
    min_temperature_c: float = 0.0
    max_cell_voltage_v: float = 4.25
    cell_voltage_margin_v: float = 0.02
    pack_voltage_margin_v: float = 5.0  # above BCP's max charge voltage


@dataclass(frozen=True, slots=True)
class ChargerLimits:
    """What the charger can deliver (CML). Currents positive into the pack."""

    max_voltage_v: float
    min_voltage_v: float
    max_current_a: float
    min_current_a: float = 0.0


@dataclass(frozen=True, slots=True)
class ChargerMeasurements:
    """What the charger delivers now (CCS/CSD). Current positive into the pack.

    `charge_time_min` / `energy_kwh` left at 0: the session counts charging time itself and
    integrates V x I between CCS frames."""

    voltage_v: float = 0.0
    current_a: float = 0.0
    charge_time_min: int = 0
    energy_kwh: float = 0.0


def _gbt_current(current_into_pack_a: float) -> float:
    """Our sign (positive into the pack) -> GB/T's (charging negative), clamped to the field."""
    return max(-400.0, min(6153.5, -current_into_pack_a))


class ChargerSession:
    """The charger side of GB/T 27930 for one pack on one point-to-point bus."""

    def __init__(
        self,
        limits: ChargerLimits,
        *,
        charger_number: int = 1,
        region_code: str = "",
        timers: SessionTimers | None = None,
        wall_time: Callable[[], datetime] | None = None,
        codec: GbtCodec | None = None,
        field_limits: PackFieldLimits | None = None,
    ) -> None:
        self.codec = codec or default_codec()
        self.field_limits = field_limits or PackFieldLimits()
        self.invalid_fields = 0  # counted here; each (message, field) is reported once per session
        self._invalid_seen: set[tuple[str, str]] = set()
        self.timers = timers or SessionTimers()
        self.limits = limits
        self.measurements = ChargerMeasurements()
        self.charger_number = charger_number
        self.region_code = region_code
        self._wall_time = wall_time
        self.tp = TransportSession(CHARGER_ADDR, BMS_ADDR)
        self.phase = Phase.IDLE
        self.output_ready = True  # CRO 0xAA as soon as the BMS is ready; the station may hold it
        self.rehandshakes = 0
        self.identity: PackIdentified | None = None
        self.pack_limits: PackLimits | None = None
        self.bhm_max_voltage_v: float | None = None
        self.stop_reason: StopReason | None = None
        self._recognised = False
        self._bro_seen = False
        self._bro_ready = False
        self._cro_ready_sent = False
        self._paused_since: float | None = None
        self._bst_seen = False
        self._csd_left = 0
        self._charging_since: float | None = None
        self._last_ccs: float | None = None
        self.energy_kwh = 0.0  # integrated from the measurements, this session
        self._cst_signals: Signals = dict(_CST_ZERO)
        self._cem_signals: Signals = dict(_CEM_ZERO)
        self._cem_until = 0.0
        self._error_until = 0.0
        self._periodic: dict[str, tuple[float, float]] = {}  # name -> (period_s, next_due)
        self._watch: dict[str, float] = {}  # expected message -> deadline
        self._handlers: dict[int, Callable[[Decoded, float, list[SessionOutput]], None]] = {
            self.codec.frame_id("BHM"): self._on_bhm,
            self.codec.frame_id("BRO"): self._on_bro,
            self.codec.frame_id("BCL"): self._on_bcl,
            self.codec.frame_id("BSM"): self._on_bsm,
            self.codec.frame_id("BST"): self._on_bst,
            self.codec.frame_id("BSD"): self._on_bsd,
            self.codec.frame_id("BEM"): self._on_bem,
        }
        self._tp_handlers: dict[int, Callable[[Decoded, float, list[SessionOutput]], None]] = {
            self.codec.pgn("BRM"): self._on_brm,
            self.codec.pgn("BCP"): self._on_bcp,
            self.codec.pgn("BCS"): self._on_bcs,
        }
        # counters
        self.frames_in = 0
        self.frames_out = 0

    # -- commands ------------------------------------------------------------------------------

    def start(self, now: float) -> list[SessionOutput]:
        """A pack is docked (connector locked, auxiliary power on): begin with CHM."""
        out: list[SessionOutput] = []
        self.rehandshakes = 0
        self.identity = None
        self.pack_limits = None
        self.stop_reason = None
        self.bhm_max_voltage_v = None
        self._invalid_seen = set()
        self._cem_until = 0.0
        self._charging_since = None
        self._last_ccs = None
        self.energy_kwh = 0.0
        self._enter(Phase.HANDSHAKE, now, out)
        self._watch = {"BHM": now + self.timers.bhm_timeout_s}
        self._periodic = {"CHM": (self.timers.chm_period_s, now)}
        out += self.tick(now)
        return out

    def stop(
        self,
        now: float,
        reason: StopReason = StopReason.MANUAL,
        faults: tuple[ChargerFault, ...] = (),
        detail: str = "",
    ) -> list[SessionOutput]:
        """Stop charging: CST with the reason, then BST/BSD/CSD. No-op when nothing is active."""
        out: list[SessionOutput] = []
        if self.phase in (Phase.ERROR,):
            self._enter(Phase.ENDED, now, out)
            self._periodic.clear()
            self._watch.clear()
            return out
        if self.phase not in ACTIVE_PHASES:
            return out
        cst = dict(_CST_ZERO)
        if reason is StopReason.CONDITION_REACHED:
            cst["CST_ConditionReached"] = 1
        elif faults or reason in (StopReason.CHARGER_FAULT, StopReason.PACK_FAULT):
            cst["CST_FaultStop"] = 1
        elif reason in (StopReason.BMS_STOP, StopReason.BMS_FAULT):
            cst["CST_BMSStopped"] = 1
        else:
            cst["CST_ManualStop"] = 1
        for f in faults:
            cst[f.value] = 1
        self._begin_stop(cst, reason, detail, tuple(f.name.lower() for f in faults), now, out)
        out += self.tick(now)
        return out

    def update_measurements(self, m: ChargerMeasurements) -> None:
        """The charger's present output (filled into CCS and CSD)."""
        self.measurements = m

    def update_limits(self, limits: ChargerLimits) -> None:
        """The charger's capability (CML)."""
        self.limits = limits

    def set_output_ready(self, ready: bool, now: float) -> list[SessionOutput]:
        """Hold CRO at 0x00 (precharge, insulation check) or let it go to 0xAA."""
        self.output_ready = ready
        return self.tick(now)

    # -- time ----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [due for _, due in self._periodic.values()]
        ds += self._watch.values()
        if self.phase is Phase.ERROR:
            ds.append(self._error_until)
        t = self.tp.next_deadline()
        if t is not None:
            ds.append(t)
        if self._paused_since is not None and self.phase is Phase.CHARGING:
            ds.append(self._paused_since + self.timers.pause_limit_s)
        return min(ds) if ds else None

    def tick(self, now: float) -> list[SessionOutput]:
        out: list[SessionOutput] = []
        for o in self.tp.tick(now):
            if isinstance(o, CanFrame):
                out.append(o)
        self._check_timeouts(now, out)
        self._send_periodic(now, out)
        self.frames_out += sum(1 for o in out if isinstance(o, CanFrame))
        return out

    # -- frames in -----------------------------------------------------------------------------

    def handle_frame(self, frame: CanFrame, now: float) -> list[SessionOutput]:
        """One received frame. Bad frames come back as a FrameRejected event, never raise."""
        self.frames_in += 1
        out: list[SessionOutput] = []
        handler = self._handlers.get(frame.arbitration_id)
        if handler is not None:
            try:
                decoded = self.codec.decode_frame(frame)
            except CodecError as exc:
                out.append(FrameRejected("malformed", str(exc)))
                return out
            handler(decoded, now, out)
        elif self.tp.is_tp_frame(frame):
            for o in self.tp.handle_frame(frame, now):
                if isinstance(o, CanFrame):
                    out.append(o)
                elif isinstance(o, MessageReceived):
                    self._on_tp_message(o, now, out)
                elif isinstance(o, TransferAborted) and o.by_peer is False:
                    if o.reason.value in (6, 7, 8, 250):
                        out.append(FrameRejected("malformed", f"TP {o.reason.name}: {o.detail}"))
                elif isinstance(o, TransferSent):
                    pass
        else:
            _, _, dest, source = id_fields(frame.arbitration_id)
            if self.codec.is_known_id(frame.arbitration_id) and source == CHARGER_ADDR:
                # Another charger on our point-to-point bus (or our own echo): not for us.
                out.append(FrameRejected("unknown", f"charger-sent frame {frame}"))
            else:
                out.append(FrameRejected("unknown", f"unknown id {frame.arbitration_id:08X}"))
            return out
        # Frames that answer immediately (CRM 0xAA after BRM, CST after BST) go out now.
        self._send_periodic(now, out)
        self.frames_out += sum(1 for o in out if isinstance(o, CanFrame))
        return out

    def _on_tp_message(self, msg: MessageReceived, now: float, out: list[SessionOutput]) -> None:
        handler = self._tp_handlers.get(msg.pgn)
        try:
            if handler is not None:
                handler(self.codec.decode_payload(msg.pgn, msg.payload), now, out)
            elif msg.pgn == PGN_BMV:
                out.append(CellVoltages(tuple(decode_bmv(msg.payload))))
            elif msg.pgn == PGN_BMT:
                out.append(ProbeTemperatures(tuple(decode_bmt(msg.payload))))
            elif msg.pgn == PGN_BSP:
                pass  # reserved content, no meaning defined
            else:
                out.append(FrameRejected("unknown", f"TP payload for PGN {msg.pgn:#06x}"))
        except CodecError as exc:
            out.append(FrameRejected("malformed", str(exc)))

    # -- message handlers ----------------------------------------------------------------------

    def _on_bhm(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase is not Phase.HANDSHAKE:
            return
        self.bhm_max_voltage_v = float(d.signals["BHM_MaxChargeVoltage"])
        self._start_identification(now, out)

    def _start_identification(self, now: float, out: list[SessionOutput]) -> None:
        self._enter(Phase.IDENTIFICATION, now, out)
        self._recognised = False
        self._bro_seen = self._bro_ready = self._cro_ready_sent = False
        self._paused_since = None
        self._periodic = {"CRM": (self.timers.crm_period_s, now)}
        self._watch = {"BRM": now + self.timers.brm_timeout_s}

    def _on_brm(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase is not Phase.IDENTIFICATION or self._recognised:
            return
        s = d.signals
        manufacturer, vin = brm_text_fields(d.raw)
        sw = ""
        if "BRM_SwBuildYear" in s and s["BRM_SwBuildYear"] != 0xFFFF:
            sw = (
                f"{int(s['BRM_SwVersionSerial'])}/{int(s['BRM_SwBuildYear']):04d}-"
                f"{int(s['BRM_SwBuildMonth']):02d}-{int(s['BRM_SwBuildDay']):02d}"
            )

        def opt(name: str, missing: int) -> int | None:
            v = s.get(name)
            return None if v is None or int(v) == missing else int(v)

        owner = opt("BRM_Ownership", 0xFF)
        self.identity = PackIdentified(
            protocol_version=int(s["BRM_ProtocolVersion"]),
            battery_type=int(s["BRM_BatteryType"]),
            rated_capacity_ah=float(s["BRM_RatedCapacity"]),
            rated_voltage_v=float(s["BRM_RatedVoltage"]),
            manufacturer=manufacturer,
            pack_serial=int(s["BRM_PackSerial"]),
            production_year=opt("BRM_ProductionYear", 1985 + 0xFF),
            production_month=opt("BRM_ProductionMonth", 0xFF),
            production_day=opt("BRM_ProductionDay", 0xFF),
            cycle_count=opt("BRM_ChargeCount", 0xFFFFFF),
            vehicle_owned=None if owner is None else owner == 1,
            vin=vin,
            software_version=sw,
            bms_2011=self.bhm_max_voltage_v is None,
        )
        out.append(self.identity)
        self._recognised = True
        self._watch = {"BCP": now + self.timers.bcp_timeout_s}
        self._periodic["CRM"] = (self.timers.crm_period_s, now)  # CRM 0xAA at once

    def _on_bcp(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase is not Phase.IDENTIFICATION or not self._recognised:
            return
        s = d.signals
        soc = float(s["BCP_SOC"])
        if not 0.0 <= soc <= 100.0:
            self._invalid("BCP", "soc_pct", soc, "outside 0-100 %", out)
            soc = 0.0  # unknown: the pack is treated as empty until BCS says otherwise
        self.pack_limits = PackLimits(
            max_cell_voltage_v=float(s["BCP_MaxCellVoltage"]),
            max_charge_current_a=-float(s["BCP_MaxChargeCurrent"]),
            nominal_energy_kwh=float(s["BCP_NominalEnergy"]),
            max_charge_voltage_v=float(s["BCP_MaxChargeVoltage"]),
            max_temperature_c=int(s["BCP_MaxTemperature"]),
            soc_pct=soc,
            voltage_v=float(s["BCP_BatteryVoltage"]),
        )
        out.append(self.pack_limits)
        self._enter(Phase.PARAMETERS, now, out)
        self._periodic = {
            "CTS": (self.timers.cts_period_s, now),
            "CML": (self.timers.cml_period_s, now),
        }
        self._watch = {
            "BRO": now + self.timers.bro_timeout_s,
            "BRO_AA": now + self.timers.bro_ready_timeout_s,
        }

    def _on_bro(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase is not Phase.PARAMETERS:
            return
        self._bro_seen = True
        self._watch.pop("BRO", None)
        if int(d.signals["BRO_Ready"]) == READY and not self._bro_ready:
            self._bro_ready = True
            self._watch.pop("BRO_AA", None)
            self._periodic = {"CRO": (self.timers.cro_period_s, now)}

    def _on_bcl(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase is Phase.PARAMETERS and self._cro_ready_sent:
            self._enter(Phase.CHARGING, now, out)
            if self._charging_since is None:
                self._charging_since = now
            self._last_ccs = None
            self._periodic = {"CCS": (self.timers.ccs_period_s, now)}
            self._watch.pop("BCL_FIRST", None)
            self._watch.setdefault("BCS", now + self.timers.bcs_timeout_s)
        if self.phase is not Phase.CHARGING:
            return
        self._watch["BCL"] = now + self.timers.bcl_timeout_s
        s = d.signals
        mode = {1: ChargeMode.CONSTANT_VOLTAGE, 2: ChargeMode.CONSTANT_CURRENT}.get(
            int(s["BCL_ChargeMode"]), ChargeMode.UNKNOWN
        )
        voltage, current = float(s["BCL_VoltageDemand"]), -float(s["BCL_CurrentDemand"])
        lim = self.pack_limits
        if lim is not None and voltage > lim.max_charge_voltage_v:
            # Not a stop: the slot never sets more than BCP's maximum; the demand is clamped.
            self._invalid("BCL", "voltage_demand_v", voltage, "above BCP max charge voltage", out)
            voltage = lim.max_charge_voltage_v
        if current < 0.0:
            self._invalid("BCL", "current_demand_a", current, "a discharge demand", out)
            current = 0.0
        out.append(ChargeRequest(voltage, current, mode))

    def _on_bcs(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase not in (Phase.PARAMETERS, Phase.CHARGING) or not self._cro_ready_sent:
            return
        self._watch["BCS"] = now + self.timers.bcs_timeout_s
        s = d.signals
        soc: int | None = int(s["BCS_SOC"])
        if soc is not None and not SOC_RANGE[0] <= soc <= SOC_RANGE[1]:
            # GB/T fills a field it does not support with 0xFF: unknown, never a crash.
            self._invalid("BCS", "soc_pct", soc, "outside 0-100 %", out)
            soc = None
        remaining = int(s["BCS_RemainingTime"])
        if remaining > 600:
            self._invalid("BCS", "remaining_min", remaining, "above 600 min", out)
            remaining = 0
        status = PackStatus(
            voltage_v=float(s["BCS_ChargeVoltage"]),
            current_a=-float(s["BCS_ChargeCurrent"]),
            max_cell_voltage_v=float(s["BCS_MaxCellVoltage"]),
            max_cell_group=int(s["BCS_MaxCellGroup"]),
            soc_pct=soc,
            remaining_min=remaining,
        )
        out.append(status)
        f = self.field_limits
        cell_limit = f.max_cell_voltage_v
        lim = self.pack_limits
        if lim is not None:
            cell_limit = min(cell_limit, lim.max_cell_voltage_v)
        if status.max_cell_voltage_v > cell_limit + f.cell_voltage_margin_v:
            detail = f"cell_over_voltage {status.max_cell_voltage_v:.2f} V > {cell_limit:.2f} V"
            self._safety_stop(detail, ("cell_over_voltage",), now, out)
        elif (
            lim is not None
            and status.voltage_v > lim.max_charge_voltage_v + f.pack_voltage_margin_v
        ):
            detail = (
                f"pack_over_voltage {status.voltage_v:.1f} V > {lim.max_charge_voltage_v:.1f} V"
            )
            self._safety_stop(detail, ("pack_over_voltage",), now, out)

    def _on_bsm(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase not in (Phase.PARAMETERS, Phase.CHARGING):
            return
        s = {k: int(v) for k, v in d.signals.items()}
        binary = ("BSM_OverCurrent", "BSM_OverTemperature", "BSM_Insulation", "BSM_ConnectorState")
        # 10 = unreliable: keep the previous state and ignore the packet (Annex C.3).
        if any(s[k] == 2 for k in binary) or s["BSM_ChargePermitted"] == 2:
            return
        flags = PackFlags(
            max_cell_number=s["BSM_MaxCellNumber"],
            max_temperature_c=s["BSM_MaxTemperature"],
            max_temperature_probe=s["BSM_MaxTempProbe"],
            min_temperature_c=s["BSM_MinTemperature"],
            min_temperature_probe=s["BSM_MinTempProbe"],
            cell_voltage=_LEVEL.get(s["BSM_CellVoltageState"], "normal"),
            soc=_LEVEL.get(s["BSM_SOCState"], "normal"),
            over_current=s["BSM_OverCurrent"] == 1,
            over_temperature=s["BSM_OverTemperature"] == 1,
            insulation_fault=s["BSM_Insulation"] == 1,
            connector_fault=s["BSM_ConnectorState"] == 1,
            charge_permitted=s["BSM_ChargePermitted"] == 1,
        )
        out.append(flags)
        abnormal = flags.abnormal
        if abnormal:
            cst = dict(_CST_ZERO) | {"CST_FaultStop": 1}
            self._begin_stop(cst, StopReason.PACK_FAULT, ",".join(abnormal), abnormal, now, out)
            return
        f = self.field_limits
        t_max = f.max_temperature_c
        if self.pack_limits is not None:
            t_max = min(t_max, self.pack_limits.max_temperature_c)
        if flags.max_temperature_c > t_max:
            detail = f"pack_over_temperature {flags.max_temperature_c} degC > {t_max:g}"
            self._safety_stop(detail, ("pack_over_temperature",), now, out)
            return
        if flags.min_temperature_c < f.min_temperature_c:
            detail = (
                f"pack_under_temperature {flags.min_temperature_c} degC < {f.min_temperature_c:g}"
            )
            self._safety_stop(detail, ("pack_under_temperature",), now, out)
            return
        if self.phase is Phase.CHARGING:
            if not flags.charge_permitted and self._paused_since is None:
                self._paused_since = now
            elif flags.charge_permitted:
                self._paused_since = None

    def _on_bst(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        s = {k: int(v) for k, v in d.signals.items()}
        if self.phase is Phase.STOPPING:
            self._bst_seen = True
            self._watch.pop("BST", None)
            return
        if self.phase not in ACTIVE_PHASES:
            return
        faults = tuple(name for sig, name in _BST_FAULTS.items() if s.get(sig) == 1)
        reasons = tuple(name for sig, name in _BST_REASONS.items() if s.get(sig) == 1)
        reason = StopReason.BMS_FAULT if faults else StopReason.BMS_STOP
        cst = dict(_CST_ZERO) | {"CST_BMSStopped": 1}
        self._begin_stop(cst, reason, ",".join(reasons + faults), faults, now, out)
        self._bst_seen = True
        self._watch.pop("BST", None)

    def _on_bsd(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        if self.phase is not Phase.STOPPING:
            return
        s = d.signals
        stop_soc = int(s["BSD_StopSOC"])
        if not 0 <= stop_soc <= 100:
            self._invalid("BSD", "stop_soc_pct", stop_soc, "outside 0-100 %", out)
            stop_soc = 0
        out.append(
            PackStatistics(
                stop_soc_pct=stop_soc,
                min_cell_voltage_v=float(s["BSD_MinCellVoltage"]),
                max_cell_voltage_v=float(s["BSD_MaxCellVoltage"]),
                min_temperature_c=int(s["BSD_MinTemperature"]),
                max_temperature_c=int(s["BSD_MaxTemperature"]),
            )
        )
        self._enter(Phase.STATISTICS, now, out)
        self._watch.clear()
        self._csd_left = self.timers.csd_repeats
        self._periodic = {"CSD": (self.timers.csd_period_s, now)}

    def _on_bem(self, d: Decoded, now: float, out: list[SessionOutput]) -> None:
        # A BMS repeats BEM until it sees our CRM 0x00: BEMs that arrive while we are (re)starting
        # identification are that tail, not a new error.
        if self.phase not in (Phase.PARAMETERS, Phase.CHARGING) and not (
            self.phase is Phase.IDENTIFICATION and self._recognised
        ):
            return
        timeouts = tuple(n for sig, n in _BEM_NAMES.items() if int(d.signals.get(sig, 0)) == 1)
        out.append(BmsError(timeouts))
        self._comm_error("BEM", None, now, out)

    # -- field checks ---------------------------------------------------------------------------

    def _invalid(
        self, message: str, name: str, value: float, reason: str, out: list[SessionOutput]
    ) -> None:
        self.invalid_fields += 1
        if (message, name) not in self._invalid_seen:
            self._invalid_seen.add((message, name))
            out.append(FieldInvalid(message, name, float(value), reason))

    def _safety_stop(
        self, detail: str, faults: tuple[str, ...], now: float, out: list[SessionOutput]
    ) -> None:
        """A reported value outside the safety window: stop here, as for an abnormal BSM flag."""
        if self.phase not in (Phase.PARAMETERS, Phase.CHARGING):
            return
        cst = dict(_CST_ZERO) | {"CST_FaultStop": 1}
        self._begin_stop(cst, StopReason.PACK_FAULT, detail, faults, now, out)

    # -- stop / error paths --------------------------------------------------------------------

    def _begin_stop(
        self,
        cst: Signals,
        reason: StopReason,
        detail: str,
        faults: tuple[str, ...],
        now: float,
        out: list[SessionOutput],
    ) -> None:
        self.stop_reason = reason
        self._cst_signals = cst
        out.append(SessionStopped(reason, detail, faults))
        self._enter(Phase.STOPPING, now, out)
        self._bst_seen = False
        self._paused_since = None
        self._periodic = {"CST": (self.timers.cst_period_s, now)}
        self._watch = {
            "BST": now + self.timers.bst_timeout_s,
            "BSD": now + self.timers.bsd_timeout_s,
        }

    def _comm_error(
        self, missing: str, cem_signal: str | None, now: float, out: list[SessionOutput]
    ) -> None:
        will_retry = self.rehandshakes < self.timers.max_rehandshakes
        out.append(Timeout(missing, self.phase, self.rehandshakes, will_retry))
        self._cem_signals = dict(_CEM_ZERO)
        if cem_signal is not None:
            self._cem_signals[cem_signal] = 1
        self._watch.clear()
        self._paused_since = None
        self._cem_until = now + self.timers.error_hold_s
        self._periodic = {"CEM": (self.timers.cem_period_s, now)} if cem_signal else {}
        if will_retry:
            self._error_until = now + self.timers.error_hold_s
            self._enter(Phase.ERROR, now, out)
        else:
            self.stop_reason = StopReason.COMM_FAILED
            out.append(SessionStopped(StopReason.COMM_FAILED, f"{missing} timeout"))
            self._enter(Phase.FAILED, now, out)

    def _check_timeouts(self, now: float, out: list[SessionOutput]) -> None:
        if self.phase is Phase.ERROR and now >= self._error_until:
            self.rehandshakes += 1
            self._start_identification(now, out)
            return
        if (
            self.phase is Phase.CHARGING
            and self._paused_since is not None
            and now >= self._paused_since + self.timers.pause_limit_s
        ):
            cst = dict(_CST_ZERO) | {"CST_ConditionReached": 1}
            self._begin_stop(cst, StopReason.PAUSE_TOO_LONG, "paused > 10 min", (), now, out)
            return
        if not self._watch:
            return
        expired = [name for name, t in self._watch.items() if now >= t]
        if not expired:
            return
        name = min(expired, key=lambda n: self._watch[n])
        if name == "BHM":
            # No BHM: a 2011-edition BMS sends none; carry on with CRM 0x00 ([Y]).
            self._start_identification(now, out)
            return
        missing = {"BRO_AA": "BRO", "BCL_FIRST": "BCL"}.get(name, name)
        if self.phase is Phase.STOPPING:
            # The stop itself goes on regardless: report, send CEM, end the session.
            out.append(Timeout(missing, self.phase, self.rehandshakes, False))
            self._cem_signals = dict(_CEM_ZERO) | {CEM_SIGNAL[missing]: 1}
            self._cem_until = now + self.timers.error_hold_s
            self._watch.clear()
            self._enter(Phase.ENDED, now, out)
            self._periodic = {"CEM": (self.timers.cem_period_s, now)}
            return
        self._comm_error(missing, CEM_SIGNAL.get(missing), now, out)

    # -- periodic sending ----------------------------------------------------------------------

    def _send_periodic(self, now: float, out: list[SessionOutput]) -> None:
        for name in list(self._periodic):
            entry = self._periodic.get(name)
            if entry is None:
                continue
            period, due = entry
            if now + 5e-4 < due:
                continue
            frame = self._build(name, now, out)
            if frame is None:
                self._periodic.pop(name, None)
                continue
            out.append(frame)
            nxt = due + period
            if nxt <= now:  # woke up late by more than a period: skip to the next grid point
                nxt += math.ceil((now - nxt) / period + 1e-9) * period
            if name in self._periodic:
                self._periodic[name] = (period, nxt)

    def _build(self, name: str, now: float, out: list[SessionOutput]) -> CanFrame | None:
        c = self.codec
        if name == "CCS":
            m = self.measurements
            if self._last_ccs is not None:
                self.energy_kwh += (
                    m.voltage_v * max(0.0, m.current_a) * (now - self._last_ccs) / 3.6e6
                )
            self._last_ccs = now
            permitted = 0 if self._paused_since is not None else 1
            return c.frame(
                "CCS",
                {
                    "CCS_OutputVoltage": max(0.0, min(6553.5, m.voltage_v)),
                    "CCS_OutputCurrent": _gbt_current(m.current_a),
                    "CCS_ChargeTime": self._charge_time_min(now),
                    "CCS_ChargePermitted": permitted,
                },
            )
        if name == "CST":
            return c.frame("CST", self._cst_signals)
        if name == "CHM":
            return c.frame("CHM", {"CHM_ProtocolVersion": PROTOCOL_V11})
        if name == "CRM":
            return c.frame(
                "CRM",
                {
                    "CRM_RecognitionResult": RECOGNISED if self._recognised else NOT_RECOGNISED,
                    "CRM_ChargerNumber": self.charger_number,
                    "CRM_RegionCode": self._region_raw(),
                },
            )
        if name == "CTS":
            return c.frame("CTS", cts_signals(self._wall_time()) if self._wall_time else None)
        if name == "CML":
            lim = self.limits
            return c.frame(
                "CML",
                {
                    "CML_MaxOutputVoltage": lim.max_voltage_v,
                    "CML_MinOutputVoltage": lim.min_voltage_v,
                    "CML_MaxOutputCurrent": _gbt_current(lim.max_current_a),
                    "CML_MinOutputCurrent": _gbt_current(lim.min_current_a),
                },
            )
        if name == "CRO":
            ready = self.output_ready
            if ready and not self._cro_ready_sent:
                self._cro_ready_sent = True
                self._watch["BCL_FIRST"] = now + self.timers.first_bcl_timeout_s
            return c.frame("CRO", {"CRO_Ready": READY if ready else NOT_READY})
        if name == "CSD":
            if self._csd_left <= 0:
                self._enter(Phase.ENDED, now, out)
                return None
            self._csd_left -= 1
            m = self.measurements
            return c.frame(
                "CSD",
                {
                    "CSD_ChargeTime": self._charge_time_min(now),
                    "CSD_Energy": max(0.0, min(6553.5, m.energy_kwh or self.energy_kwh)),
                    "CSD_ChargerNumber": self.charger_number,
                },
            )
        if name == "CEM":
            if now >= self._cem_until + 1e-9 and self._cem_until > 0:
                return None
            return c.frame("CEM", self._cem_signals)
        raise KeyError(name)

    def _charge_time_min(self, now: float) -> int:
        minutes = self.measurements.charge_time_min
        if not minutes and self._charging_since is not None:
            minutes = int((now - self._charging_since) // 60)
        return max(0, min(600, minutes))

    def _region_raw(self) -> int:
        if not self.region_code:
            return 0xFFFFFF
        return int.from_bytes(self.region_code.encode("ascii")[:3].ljust(3, b"\xff"), "little")

    def _enter(self, phase: Phase, now: float, out: list[SessionOutput]) -> None:
        if phase is not self.phase:
            out.append(PhaseChanged(self.phase, phase))
            self.phase = phase
