"""Simulated battery pack: a physical model plus the BMS side of GB/T 27930 (sans-I/O).

- `PackModel`: capacity, SOC integration, OCV curve (LFP or NMC), cell spread, temperature, and
  the current the pack accepts (CC, then CV taper near full). It is the load a charger simulator
  drives: `voltage_v`, `max_current_a`, `apply_current(current_a, dt_s)`. `speed` scales the
  physics only; protocol timers stay real.
- `BmsCore`: the BMS state machine (BHM, BRM/BCP/BCS over J1939 TP, BRO, BCL/BCS/BSM, BST, BSD,
  BEM) with fault injection (`Fault`). `handle_frame(frame, now)` / `tick(now)` return frames.
  By default the pack integrates the current the charger reports in CCS (a CAN-only bench);
  set `current_from_ccs=False` when a charger simulator calls `apply_current` itself.
- The async runner is drivers.can.runner.CoreRunner (the same one the charger side uses).
"""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from drivers.can.bus import BusOwner
from drivers.can.codec import (
    BMS_ADDR,
    CHARGER_ADDR,
    PGN_BMT,
    PGN_BMV,
    CanFrame,
    CodecError,
    GbtCodec,
    Signals,
    brm_put_text,
    default_codec,
    encode_bmt,
    encode_bmv,
)
from drivers.can.config import CanBusConfig
from drivers.can.events import BATTERY_TYPE_CODES
from drivers.can.j1939 import MessageReceived, TransportSession
from drivers.can.runner import CoreRunner

# Open-circuit voltage per cell vs SOC (%), typical published shapes.
OCV_CURVES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "LFP": (
        (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
        (2.80, 3.10, 3.20, 3.25, 3.27, 3.28, 3.29, 3.30, 3.31, 3.32, 3.34, 3.37, 3.50),
    ),
    "NMC": (
        (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
        (3.00, 3.45, 3.55, 3.62, 3.68, 3.74, 3.80, 3.87, 3.95, 4.04, 4.12, 4.16, 4.20),
    ),
}
MAX_CELL_V = {"LFP": 3.65, "NMC": 4.25}
CV_CELL_V = {"LFP": 3.60, "NMC": 4.18}


def ocv(chemistry: str, soc_pct: float) -> float:
    xs, ys = OCV_CURVES[chemistry]
    s = max(0.0, min(100.0, soc_pct))
    i = bisect.bisect_right(xs, s)
    if i >= len(xs):
        return ys[-1]
    if i == 0:
        return ys[0]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (s - x0) / (x1 - x0)


@dataclass
class PackSpec:
    chemistry: str = "LFP"  # LFP or NMC
    series_cells: int = 112
    capacity_ah: float = 150.0
    soc_pct: float = 30.0
    temperature_c: float = 25.0
    ambient_c: float = 25.0
    cell_resistance_ohm: float = 0.0008
    cell_spread_v: float = 0.015
    max_charge_current_a: float = 250.0
    max_temperature_c: int = 55
    target_soc_pct: float = 100.0
    manufacturer: str = "SIMB"
    serial: int = 1
    vin: str = ""
    cycle_count: int = 0
    thermal_mass_j_per_k: float = 150_000.0
    # The rack's liquid cooling loop: about 5 kW at 20 K over ambient, so a resting pack is
    # back near ambient (time constant 10 min) within world-minutes.
    cooling_w_per_k: float = 250.0

    @property
    def max_cell_voltage_v(self) -> float:
        return MAX_CELL_V[self.chemistry]

    @property
    def rated_voltage_v(self) -> float:
        return round(self.series_cells * ocv(self.chemistry, 50.0), 1)

    @property
    def nominal_energy_kwh(self) -> float:
        return round(self.capacity_ah * self.rated_voltage_v / 1000.0, 1)


class PackModel:
    """Physics of one pack. Current positive = into the pack (charging)."""

    def __init__(self, spec: PackSpec, speed: float = 1.0) -> None:
        if spec.chemistry not in OCV_CURVES:
            raise ValueError(f"chemistry must be one of {sorted(OCV_CURVES)}")
        self.spec = spec
        self.speed = speed
        self.soc_pct = spec.soc_pct
        self.temperature_c = spec.temperature_c
        self.current_a = 0.0
        self.energy_in_kwh = 0.0
        self.extra_temperature_c = 0.0  # fault injection

    @property
    def ocv_cell_v(self) -> float:
        return ocv(self.spec.chemistry, self.soc_pct)

    @property
    def cell_voltage_v(self) -> float:
        return self.ocv_cell_v + self.current_a * self.spec.cell_resistance_ohm

    @property
    def max_cell_v(self) -> float:
        return self.cell_voltage_v + self.spec.cell_spread_v / 2

    @property
    def min_cell_v(self) -> float:
        return self.cell_voltage_v - self.spec.cell_spread_v / 2

    @property
    def voltage_v(self) -> float:
        return self.spec.series_cells * self.cell_voltage_v

    @property
    def max_temperature_c(self) -> float:
        return self.temperature_c + 2.0 + self.extra_temperature_c

    @property
    def min_temperature_c(self) -> float:
        return self.temperature_c - 1.0

    @property
    def _taper_a(self) -> float:
        """Current that keeps the top cell at the CV voltage."""
        s = self.spec
        headroom_v = CV_CELL_V[s.chemistry] - (self.ocv_cell_v + s.cell_spread_v / 2)
        return max(0.0, headroom_v / s.cell_resistance_ohm)

    @property
    def full(self) -> bool:
        """SOC target reached, or the CV taper fell below C/50 (how a BMS ends a CV charge)."""
        return (
            self.soc_pct >= self.spec.target_soc_pct or self._taper_a < 0.02 * self.spec.capacity_ah
        )

    @property
    def cv_voltage_v(self) -> float:
        return round(self.spec.series_cells * CV_CELL_V[self.spec.chemistry], 1)

    @property
    def max_current_a(self) -> float:
        """Current the pack accepts now: CC limit, tapering so the top cell stays at CV."""
        if self.full:
            return 0.0
        s = self.spec
        limit = min(s.max_charge_current_a, self._taper_a)
        if self.temperature_c < 0 or self.max_temperature_c > s.max_temperature_c:
            return 0.0
        if self.temperature_c < 10 or self.max_temperature_c > s.max_temperature_c - 5:
            limit *= 0.5
        return limit

    @property
    def constant_voltage(self) -> bool:
        return self.max_current_a < self.spec.max_charge_current_a * 0.98

    def apply_current(self, current_a: float, dt_s: float) -> None:
        """Integrate `current_a` (positive into the pack) over `dt_s` real seconds x speed."""
        dt = max(0.0, dt_s) * self.speed
        self.current_a = current_a
        s = self.spec
        self.soc_pct = max(0.0, min(100.0, self.soc_pct + current_a * dt / 36.0 / s.capacity_ah))
        self.energy_in_kwh += self.voltage_v * current_a * dt / 3.6e6
        heat_w = current_a**2 * s.cell_resistance_ohm * s.series_cells
        cool_w = s.cooling_w_per_k * (self.temperature_c - s.ambient_c)
        self.temperature_c += (heat_w - cool_w) * dt / s.thermal_mass_j_per_k

    @property
    def remaining_min(self) -> int:
        i = max(self.current_a, 1.0)
        left_ah = (self.spec.target_soc_pct - self.soc_pct) / 100.0 * self.spec.capacity_ah
        return int(max(0.0, min(600.0, left_ah / i * 60.0 / self.speed)))


class Fault(StrEnum):
    BCL_STOPS = "bcl_stops"  # BCL no longer sent (charger must time out in 1 s)
    SILENT = "silent"  # nothing sent at all
    OVER_TEMPERATURE = "over_temperature"  # BSM over-temperature 01 (and a hot probe)
    INSULATION = "insulation"  # BSM insulation 01
    CELL_OVER_VOLTAGE = "cell_over_voltage"  # BSM cell voltage 01
    BST_FAULT = "bst_fault"  # BMS stops with BST insulation fault
    PAUSE = "pause"  # BSM charge permitted 00
    GARBAGE = "garbage"  # random frames with unknown ids every 50 ms
    WRONG_DLC = "wrong_dlc"  # BCL sent with 3 bytes
    BROKEN_TP = "broken_tp"  # BCS TP.DT with a wrong sequence number
    NO_BHM = "no_bhm"  # a 2011-edition BMS (no BHM)
    # Out-of-range values with no BSM flag set: the charger side must range-check them itself.
    SOC_UNSUPPORTED = "soc_unsupported"  # BCS/BSD SOC 0xFF (GB/T "not supported")
    HOT_PROBE = "hot_probe"  # BSM max temperature 95 degC, over-temperature flag still 00
    CELL_HIGH = "cell_high"  # BCS max cell voltage 4.60 V, BSM cell state still normal
    PACK_OVER_VOLTAGE = "pack_over_voltage"  # BCS pack voltage 100 V above BCP's maximum
    BAD_REMAINING = "bad_remaining"  # BCS remaining time 0xFFFF min (not a safety value)


class BmsPhase(StrEnum):
    OFF = "off"
    WAIT_CHARGER = "wait_charger"
    HANDSHAKE = "handshake"
    IDENTIFICATION = "identification"
    PARAMETERS = "parameters"
    READY = "ready"
    CHARGING = "charging"
    STOPPING = "stopping"
    STATISTICS = "statistics"
    ERROR = "error"
    ENDED = "ended"


@dataclass
class BmsTimers:
    bhm_period_s: float = 0.25
    brm_period_s: float = 0.25
    bcp_period_s: float = 0.5
    bro_period_s: float = 0.25
    bcl_period_s: float = 0.05
    bcs_period_s: float = 0.25
    bsm_period_s: float = 0.25
    bst_period_s: float = 0.01
    bsd_period_s: float = 0.25
    bem_period_s: float = 0.25
    bmv_period_s: float = 10.0
    ready_delay_s: float = 0.2  # BRO 0x00 -> 0xAA (contactors closing)
    crm_aa_timeout_s: float = 5.0
    cml_timeout_s: float = 5.0
    cro_timeout_s: float = 60.0
    ccs_timeout_s: float = 1.0
    cst_timeout_s: float = 5.0
    csd_timeout_s: float = 10.0
    bst_repeats_before_bsd: int = 5


@dataclass
class BmsCounters:
    frames_in: int = 0
    frames_out: int = 0
    bad_frames: int = 0
    ccs_seen: int = 0
    cem_seen: int = 0
    sessions_ended: int = 0
    handshakes: int = 0  # CHM that began a session (the first, or one after an ended one)
    timeouts: list[str] = field(default_factory=list)


class BmsCore:
    """The BMS side of GB/T 27930 for one pack, sans-I/O."""

    def __init__(
        self,
        model: PackModel,
        *,
        timers: BmsTimers | None = None,
        current_from_ccs: bool = True,
        codec: GbtCodec | None = None,
        seed: int = 1,
        send_bmv: bool = False,
    ) -> None:
        self.model = model
        self.codec = codec or default_codec()
        self.timers = timers or BmsTimers()
        self.current_from_ccs = current_from_ccs
        self.send_bmv = send_bmv
        self.tp = TransportSession(BMS_ADDR, CHARGER_ADDR)
        self.phase = BmsPhase.WAIT_CHARGER
        self.faults: set[Fault] = set()
        self.counters = BmsCounters()
        self.charger_current_a = 0.0
        self.charger_paused = False
        self._rng = random.Random(seed)
        self._periodic: dict[str, tuple[float, float]] = {}
        self._watch: dict[str, float] = {}
        self._last_ccs: float | None = None
        self._bst_signals: Signals = {}
        self._bst_sent = 0
        self._bem_signals: Signals = {}
        self._ready_at = 0.0
        self._ids = {
            n: self.codec.frame_id(n)
            for n in ("CHM", "CRM", "CTS", "CML", "CRO", "CCS", "CST", "CSD", "CEM")
        }

    # -- fault injection -----------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        self.faults.add(fault)
        if fault is Fault.OVER_TEMPERATURE:
            self.model.extra_temperature_c = 40.0

    def clear(self, fault: Fault) -> None:
        self.faults.discard(fault)
        if fault is Fault.OVER_TEMPERATURE:
            self.model.extra_temperature_c = 0.0

    def replug(self, now: float) -> None:
        """The connector re-plugged (auxiliary supply cycled): the BMS forgets its session and
        waits for the charger's CHM. Injected faults stay (clear them separately)."""
        self.tp = TransportSession(BMS_ADDR, CHARGER_ADDR)
        self.model.current_a = 0.0
        self.charger_current_a = 0.0
        self.charger_paused = False
        self._last_ccs = None
        self._bst_signals = {}
        self._bst_sent = 0
        self._bem_signals = {}
        self._enter(BmsPhase.WAIT_CHARGER, {}, now)
        self._watch = {}

    # -- time ----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [due for _, due in self._periodic.values()]
        ds += self._watch.values()
        t = self.tp.next_deadline()
        if t is not None:
            ds.append(t)
        return min(ds) if ds else None

    def tick(self, now: float) -> list[CanFrame]:
        out: list[CanFrame] = [o for o in self.tp.tick(now) if isinstance(o, CanFrame)]
        if Fault.BST_FAULT in self.faults and self.phase is BmsPhase.CHARGING:
            self._start_bst({"BST_InsulationFault": 1}, now)
        self._check_timeouts(now, out)
        self._send_periodic(now, out)
        return self._emit(out)

    def _emit(self, out: list[CanFrame]) -> list[CanFrame]:
        if Fault.SILENT in self.faults:
            return []
        self.counters.frames_out += len(out)
        return out

    # -- frames in -----------------------------------------------------------------------------

    def handle_frame(self, frame: CanFrame, now: float) -> list[CanFrame]:
        self.counters.frames_in += 1
        out: list[CanFrame] = []
        fid = frame.arbitration_id
        if self.tp.is_tp_frame(frame):
            for o in self.tp.handle_frame(frame, now):
                if isinstance(o, CanFrame):
                    if (
                        Fault.BROKEN_TP in self.faults
                        and o.arbitration_id == self.tp.dt_id
                        and o.data[0] == 2
                    ):
                        o = CanFrame(o.arbitration_id, bytes([5]) + o.data[1:])
                    out.append(o)
                elif isinstance(o, MessageReceived):
                    pass  # the charger sends nothing over TP in GB/T
            return self._emit(out)
        try:
            d = self.codec.decode_frame(frame)
        except CodecError:
            self.counters.bad_frames += 1
            return []
        s = d.signals
        if fid == self._ids["CHM"]:
            # CHM after an ended session: the charger started a new one (as after cycling the
            # auxiliary supply, e.g. once an e-stop is reset)
            restart = self.phase in (BmsPhase.WAIT_CHARGER, BmsPhase.ENDED)
            if restart and Fault.NO_BHM not in self.faults:
                self.counters.handshakes += 1
                self._enter(BmsPhase.HANDSHAKE, {"BHM": self.timers.bhm_period_s}, now)
        elif fid == self._ids["CRM"]:
            result = int(s["CRM_RecognitionResult"])
            if result == 0x00 and self.phase in (
                BmsPhase.WAIT_CHARGER,
                BmsPhase.HANDSHAKE,
                BmsPhase.ERROR,
            ):
                self._enter(BmsPhase.IDENTIFICATION, {"BRM": self.timers.brm_period_s}, now)
                self._watch = {"CRM_AA": now + self.timers.crm_aa_timeout_s}
            elif result == 0xAA and self.phase is BmsPhase.IDENTIFICATION:
                self._enter(BmsPhase.PARAMETERS, {"BCP": self.timers.bcp_period_s}, now)
                self._watch = {"CML": now + self.timers.cml_timeout_s}
        elif fid == self._ids["CML"]:
            if self.phase is BmsPhase.PARAMETERS:
                self._enter(BmsPhase.READY, {"BRO": self.timers.bro_period_s}, now)
                self._ready_at = now + self.timers.ready_delay_s
                self._watch = {"CRO": now + self.timers.cro_timeout_s}
        elif fid == self._ids["CRO"]:
            if (
                self.phase is BmsPhase.READY
                and int(s["CRO_Ready"]) == 0xAA
                and now >= self._ready_at
            ):
                periodic = {
                    "BCL": self.timers.bcl_period_s,
                    "BCS": self.timers.bcs_period_s,
                    "BSM": self.timers.bsm_period_s,
                }
                if self.send_bmv:
                    periodic["BMV"] = self.timers.bmv_period_s
                self._enter(BmsPhase.CHARGING, periodic, now)
                self._last_ccs = now
                self._watch = {"CCS": now + self.timers.ccs_timeout_s}
        elif fid == self._ids["CCS"]:
            if self.phase is BmsPhase.CHARGING:
                self.counters.ccs_seen += 1
                self._watch["CCS"] = now + self.timers.ccs_timeout_s
                current_a = -float(s["CCS_OutputCurrent"])
                self.charger_paused = int(s.get("CCS_ChargePermitted", 1)) == 0
                if self.current_from_ccs and self._last_ccs is not None:
                    self.model.apply_current(max(0.0, current_a), now - self._last_ccs)
                self._last_ccs = now
                self.charger_current_a = current_a
                if self.model.full and not self._bst_signals:
                    self._start_bst({"BST_SOCTargetReached": 1}, now)
        elif fid == self._ids["CST"]:
            if self.phase in (
                BmsPhase.PARAMETERS,
                BmsPhase.READY,
                BmsPhase.CHARGING,
                BmsPhase.IDENTIFICATION,
            ):
                self._start_bst({"BST_ChargerStopped": 1}, now)
            elif self.phase is BmsPhase.STOPPING:
                self._watch.pop("CST", None)
        elif fid == self._ids["CSD"]:
            if self.phase in (BmsPhase.STOPPING, BmsPhase.STATISTICS):
                self._end(now)
        elif fid == self._ids["CEM"]:
            self.counters.cem_seen += 1
            if self.phase not in (BmsPhase.ERROR, BmsPhase.ENDED, BmsPhase.WAIT_CHARGER):
                # Charger saw a timeout: stop and wait for its re-handshake (CRM 0x00).
                self.model.current_a = 0.0
                self._enter(BmsPhase.ERROR, {}, now)
                self._watch = {}
        self._send_periodic(now, out)
        return self._emit(out)

    # -- BMS-side stop / errors ----------------------------------------------------------------

    def request_stop(self, now: float, fault: bool = False) -> list[CanFrame]:
        """The BMS ends charging itself (BST)."""
        sig = {"BST_InsulationFault": 1} if fault else {"BST_SOCTargetReached": 1}
        self._start_bst(sig, now)
        out: list[CanFrame] = []
        self._send_periodic(now, out)
        return self._emit(out)

    def _start_bst(self, signals: Mapping[str, int | float], now: float) -> None:
        base: Signals = {s.name: 0 for s in self.codec.db.get_message_by_name("BST").signals}
        self._bst_signals = base | dict(signals)
        self._bst_sent = 0
        self.model.current_a = 0.0
        self._enter(BmsPhase.STOPPING, {"BST": self.timers.bst_period_s}, now)
        self._watch = {"CSD": now + self.timers.csd_timeout_s}
        if not signals.get("BST_ChargerStopped"):
            self._watch["CST"] = now + self.timers.cst_timeout_s

    def _end(self, now: float) -> None:
        self.counters.sessions_ended += 1
        self._enter(BmsPhase.ENDED, {}, now)
        self._watch = {}

    def _check_timeouts(self, now: float, out: list[CanFrame]) -> None:
        expired = [n for n, t in self._watch.items() if now >= t]
        if not expired:
            return
        name = expired[0]
        self.counters.timeouts.append(name)
        bem_signal = {
            "CRM_AA": "BEM_CRMAATimeout",
            "CML": "BEM_CTSCMLTimeout",
            "CRO": "BEM_CROTimeout",
            "CCS": "BEM_CCSTimeout",
            "CST": "BEM_CSTTimeout",
            "CSD": "BEM_CSDTimeout",
        }[name]
        base: Signals = {s.name: 0 for s in self.codec.db.get_message_by_name("BEM").signals}
        self._bem_signals = base | {bem_signal: 1}
        self.model.current_a = 0.0
        self._enter(BmsPhase.ERROR, {"BEM": self.timers.bem_period_s}, now)
        self._watch = {}

    # -- sending -------------------------------------------------------------------------------

    def _enter(self, phase: BmsPhase, periodic: dict[str, float], now: float) -> None:
        self.phase = phase
        self._periodic = {name: (p, now) for name, p in periodic.items()}
        if Fault.GARBAGE in self.faults:
            self._periodic["GARBAGE"] = (0.05, now)

    def _send_periodic(self, now: float, out: list[CanFrame]) -> None:
        if Fault.GARBAGE in self.faults and "GARBAGE" not in self._periodic:
            self._periodic["GARBAGE"] = (0.05, now)
        for name in list(self._periodic):
            period, due = self._periodic[name]
            if now + 5e-4 < due:
                continue
            out += self._build(name, now)
            nxt = due + period
            if name in self._periodic:
                self._periodic[name] = (period, nxt if nxt > now else now + period)

    def _build(self, name: str, now: float) -> list[CanFrame]:
        c = self.codec
        m = self.model
        spec = m.spec
        if name == "BHM":
            return [c.frame("BHM", {"BHM_MaxChargeVoltage": self._max_voltage()})]
        if name == "BRM":
            payload = c.encode(
                "BRM",
                {
                    "BRM_ProtocolVersion": 0x000101,
                    "BRM_BatteryType": BATTERY_TYPE_CODES[spec.chemistry],
                    "BRM_RatedCapacity": spec.capacity_ah,
                    "BRM_RatedVoltage": spec.rated_voltage_v,
                    "BRM_PackSerial": spec.serial,
                    "BRM_ProductionYear": 2024,
                    "BRM_ProductionMonth": 5,
                    "BRM_ProductionDay": 17,
                    "BRM_ChargeCount": spec.cycle_count,
                    "BRM_Ownership": 0,
                    "BRM_SwVersionSerial": 1,
                    "BRM_SwBuildDay": 1,
                    "BRM_SwBuildMonth": 4,
                    "BRM_SwBuildYear": 2025,
                },
            )
            payload = brm_put_text(payload, spec.manufacturer, spec.vin)
            return self._tp_send(c.pgn("BRM"), payload, now)
        if name == "BCP":
            payload = c.encode(
                "BCP",
                {
                    "BCP_MaxCellVoltage": spec.max_cell_voltage_v,
                    "BCP_MaxChargeCurrent": -spec.max_charge_current_a,
                    "BCP_NominalEnergy": spec.nominal_energy_kwh,
                    "BCP_MaxChargeVoltage": self._max_voltage(),
                    "BCP_MaxTemperature": spec.max_temperature_c,
                    "BCP_SOC": round(m.soc_pct, 1),
                    "BCP_BatteryVoltage": round(m.voltage_v, 1),
                },
            )
            return self._tp_send(c.pgn("BCP"), payload, now)
        if name == "BRO":
            ready = 0xAA if now >= self._ready_at else 0x00
            return [c.frame("BRO", {"BRO_Ready": ready})]
        if name == "BCL":
            if Fault.BCL_STOPS in self.faults:
                return []
            cv = m.constant_voltage
            frame = c.frame(
                "BCL",
                {
                    "BCL_VoltageDemand": min(m.cv_voltage_v, 6553.5),
                    "BCL_CurrentDemand": -round(m.max_current_a, 1),
                    "BCL_ChargeMode": 1 if cv else 2,
                },
            )
            if Fault.WRONG_DLC in self.faults:
                return [CanFrame(frame.arbitration_id, frame.data[:3])]
            return [frame]
        if name == "BCS":
            payload = c.encode(
                "BCS",
                {
                    "BCS_ChargeVoltage": round(
                        m.voltage_v + (100.0 if Fault.PACK_OVER_VOLTAGE in self.faults else 0.0),
                        1,
                    ),
                    "BCS_ChargeCurrent": -round(max(0.0, self._measured_current_a()), 1),
                    "BCS_MaxCellVoltage": 4.6
                    if Fault.CELL_HIGH in self.faults
                    else round(m.max_cell_v, 2),
                    "BCS_MaxCellGroup": 1,
                    "BCS_SOC": 0xFF
                    if Fault.SOC_UNSUPPORTED in self.faults
                    else int(round(m.soc_pct)),
                    "BCS_RemainingTime": 0xFFFF
                    if Fault.BAD_REMAINING in self.faults
                    else (m.remaining_min),
                },
            )
            return self._tp_send(c.pgn("BCS"), payload, now)
        if name == "BSM":
            return [c.frame("BSM", self._bsm_signals())]
        if name == "BMV":
            n = min(spec.series_cells, 256)
            cells = [
                (round(m.cell_voltage_v + self._rng.uniform(-1, 1) * spec.cell_spread_v / 2, 2), 0)
                for _ in range(n)
            ]
            out = self._tp_send(PGN_BMV, encode_bmv(cells), now)
            return out
        if name == "BMT":
            return self._tp_send(PGN_BMT, encode_bmt([int(m.max_temperature_c)] * 16), now)
        if name == "BST":
            self._bst_sent += 1
            # GB/T 27930 phase 6: BSD only once the charger's CST is in (after our own BST the
            # CST watch is pending until then; a conformance BMS showed the simulator sent BSD
            # 50 ms after BST whether or not the charger had answered).
            answered = "CST" not in self._watch
            if self._bst_sent >= self.timers.bst_repeats_before_bsd and answered:
                self._periodic.setdefault("BSD", (self.timers.bsd_period_s, now + 0.01))
            return [c.frame("BST", self._bst_signals)]
        if name == "BSD":
            self._periodic.pop("BST", None)
            if self.phase is BmsPhase.STOPPING:
                self.phase = BmsPhase.STATISTICS
            return [
                c.frame(
                    "BSD",
                    {
                        "BSD_StopSOC": 0xFF
                        if Fault.SOC_UNSUPPORTED in self.faults
                        else int(round(m.soc_pct)),
                        "BSD_MinCellVoltage": round(m.min_cell_v, 2),
                        "BSD_MaxCellVoltage": round(m.max_cell_v, 2),
                        "BSD_MinTemperature": int(m.min_temperature_c),
                        "BSD_MaxTemperature": int(m.max_temperature_c),
                    },
                )
            ]
        if name == "BEM":
            return [c.frame("BEM", self._bem_signals)]
        if name == "GARBAGE":
            data = bytes(self._rng.getrandbits(8) for _ in range(self._rng.randint(0, 8)))
            return [CanFrame(0x0070F4B5 + self._rng.randint(0, 3) * 0x10000, data)]
        raise KeyError(name)

    def _measured_current_a(self) -> float:
        # From CCS in a CAN-only bench; from the model when a charger simulator drives it.
        return self.charger_current_a if self.current_from_ccs else self.model.current_a

    def _tp_send(self, pgn: int, payload: bytes, now: float) -> list[CanFrame]:
        frames = [o for o in self.tp.send(pgn, payload, now) if isinstance(o, CanFrame)]
        return frames

    def _max_voltage(self) -> float:
        s = self.model.spec
        return round(s.series_cells * s.max_cell_voltage_v, 1)

    def _bsm_signals(self) -> Signals:
        m = self.model
        f = self.faults
        return {
            "BSM_MaxCellNumber": 7,
            "BSM_MaxTemperature": 95 if Fault.HOT_PROBE in f else int(round(m.max_temperature_c)),
            "BSM_MaxTempProbe": 3,
            "BSM_MinTemperature": int(round(m.min_temperature_c)),
            "BSM_MinTempProbe": 11,
            "BSM_CellVoltageState": 1 if Fault.CELL_OVER_VOLTAGE in f else 0,
            "BSM_SOCState": 0,
            "BSM_OverCurrent": 0,
            "BSM_OverTemperature": 1 if Fault.OVER_TEMPERATURE in f else 0,
            "BSM_Insulation": 1 if Fault.INSULATION in f else 0,
            "BSM_ConnectorState": 0,
            "BSM_ChargePermitted": 0 if Fault.PAUSE in f else 1,
        }


class FrameTransport(Protocol):
    """A BusOwner (python-can bus) or an SLCAN-over-TCP port: same three methods."""

    def send(self, frame: CanFrame) -> bool: ...

    def set_handler(self, handler: Callable[[CanFrame], None]) -> None: ...

    async def run(self) -> None: ...


class SimPack:
    """A simulated pack on a transport: BmsCore driven in real time (two named tasks)."""

    def __init__(self, name: str, core: BmsCore, transport: FrameTransport) -> None:
        self.name = name
        self.core = core
        self.transport = transport
        self.runner = CoreRunner(core, transport.send)
        transport.set_handler(self.runner.on_frame)

    @classmethod
    def on_bus(cls, name: str, core: BmsCore, config: CanBusConfig) -> SimPack:
        return cls(name, core, BusOwner(f"pack-{name}", config))

    def inject(self, fault: Fault) -> None:
        self.core.inject(fault)
        self.runner.dispatch([])

    def clear(self, fault: Fault) -> None:
        self.core.clear(fault)
        self.runner.dispatch([])

    def replug(self) -> None:
        self.core.replug(self.runner.now)
        self.runner.dispatch([])

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.transport.run(), name=f"pack-transport-{self.name}")
            tg.create_task(self.runner.run(), name=f"pack-bms-{self.name}")
