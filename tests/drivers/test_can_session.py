"""Charger-side GB/T 27930 session, sans-I/O, against the simulated BMS in simulated time."""

from __future__ import annotations

import dataclasses

import pytest

from drivers.can.codec import CanFrame, default_codec
from drivers.can.events import (
    BmsError,
    ChargeMode,
    ChargeRequest,
    ChargerFault,
    FrameRejected,
    PackFlags,
    PackIdentified,
    PackLimits,
    PackStatistics,
    PackStatus,
    Phase,
    SessionStopped,
    StopReason,
    Timeout,
)
from drivers.can.session import ChargerSession, SessionTimers
from sim.devices.pack import Fault
from tests.drivers.can_fixtures import LIMITS, make_wire

C = default_codec()

FULL_ORDER = [
    Phase.HANDSHAKE,
    Phase.IDENTIFICATION,
    Phase.PARAMETERS,
    Phase.CHARGING,
    Phase.STOPPING,
    Phase.STATISTICS,
    Phase.ENDED,
]


def test_full_session_chm_to_csd_in_order() -> None:
    w = make_wire(soc_pct=50.0, manufacturer="CATL", vin="LNBSCU3H8JR000001")
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    assert w.charger.phase is Phase.CHARGING
    ident = w.of(PackIdentified)[0]
    assert ident.manufacturer == "CATL" and ident.vin == "LNBSCU3H8JR000001"
    assert ident.battery_type == 3 and ident.rated_capacity_ah == pytest.approx(150.0)
    assert ident.pack_type == "LFP"  # BRM's code by name (drivers.can.events.BATTERY_TYPES)
    limits = w.of(PackLimits)[0]
    assert limits.max_charge_current_a == pytest.approx(250.0)  # positive into the pack
    req = w.of(ChargeRequest)[-1]
    assert req.current_a > 0 and req.mode is ChargeMode.CONSTANT_CURRENT
    status = w.of(PackStatus)[-1]
    assert status.current_a > 0 and status.soc_pct >= 50
    assert w.of(PackFlags)[-1].charge_permitted
    w.do(w.charger.stop(w.now))
    w.run_until(5.0)
    assert w.phases() == FULL_ORDER
    assert w.of(SessionStopped)[0].reason is StopReason.MANUAL
    assert w.of(PackStatistics)
    assert w.bms.counters.sessions_ended == 1
    # Frames on the wire: CHM first, CST manual stop, CSD at the end.
    assert w.log[0][1] == CanFrame(0x1826F456, bytes.fromhex("010100"))
    assert w.frames("CST")[0][1].data == bytes.fromhex("0400F0F0")
    assert w.frames("CSD")


def test_periods_ccs_50ms_and_cst_10ms() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(5.0)
    ccs = [t for t, _ in w.frames("CCS")]
    gaps = [b - a for a, b in zip(ccs, ccs[1:], strict=False)]
    assert len(ccs) > 40
    assert max(gaps) == pytest.approx(0.05, abs=1e-6) and min(gaps) == pytest.approx(0.05)
    w.do(w.charger.stop(w.now))
    w.run_until(5.2)
    cst = [t for t, _ in w.frames("CST")]
    assert cst[1] - cst[0] == pytest.approx(0.01)


def test_bms_stop_soc_target_reached() -> None:
    w = make_wire(soc_pct=99.95, capacity_ah=2.0)
    w.do(w.charger.start(w.now))
    w.run_until(10.0)
    stopped = w.of(SessionStopped)
    assert stopped[0].reason is StopReason.BMS_STOP
    assert "soc_target_reached" in stopped[0].detail
    assert w.frames("CST", True)[0][1].data == bytes.fromhex("4000F0F0")
    assert w.charger.phase is Phase.ENDED


def test_bms_fault_stop_bst_insulation() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.bms.inject(Fault.BST_FAULT)
    w.run_until(4.0)
    stopped = w.of(SessionStopped)[0]
    assert stopped.reason is StopReason.BMS_FAULT and stopped.faults == ("insulation",)


@pytest.mark.parametrize(
    ("fault", "flag"),
    [
        (Fault.OVER_TEMPERATURE, "over_temperature"),
        (Fault.INSULATION, "insulation_fault"),
        (Fault.CELL_OVER_VOLTAGE, "cell_voltage_too_high"),
    ],
)
def test_abnormal_bsm_flag_stops_with_cst_fault(fault: Fault, flag: str) -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.bms.inject(fault)
    t0 = w.now
    w.run_until(4.0)
    stopped = w.of(SessionStopped)[0]
    assert stopped.reason is StopReason.PACK_FAULT and flag in stopped.faults
    cst_t, cst = w.frames("CST", True)[0]
    assert cst.data == bytes.fromhex("1000F0F0")  # fault stop
    assert cst_t - t0 <= 0.26  # within one BSM period


def test_pause_on_bsm_permit_0_and_resume_then_pause_too_long() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.bms.inject(Fault.PAUSE)
    w.run_until(4.0)
    assert w.charger.phase is Phase.CHARGING
    last_ccs = w.frames("CCS")[-1][1]
    assert last_ccs.data[6] == 0xFC  # charging permitted 00: paused
    w.bms.clear(Fault.PAUSE)
    w.run_until(5.0)
    assert w.frames("CCS")[-1][1].data[6] == 0xFD
    # The 10 min limit, shortened here to keep the simulation small.
    w.charger.timers = dataclasses.replace(w.charger.timers, pause_limit_s=6.0)
    w.bms.inject(Fault.PAUSE)
    w.run_until(5.0 + 5.0)
    assert not w.of(SessionStopped)
    w.run_until(5.0 + 7.0)
    assert w.of(SessionStopped)[0].reason is StopReason.PAUSE_TOO_LONG
    assert SessionTimers().pause_limit_s == 600.0


def test_unreliable_bsm_is_ignored() -> None:
    s = ChargerSession(LIMITS)
    s.phase = Phase.CHARGING
    out = s.handle_frame(CanFrame(0x181356F4, bytes.fromhex("284F034D1A80D0")), 0.0)
    assert not [o for o in out if isinstance(o, (PackFlags, SessionStopped))]
    # ...but 10 in SPN3090 (cell voltage) means too LOW: a stop.
    out = s.handle_frame(CanFrame(0x181356F4, bytes.fromhex("284F034D1A02D0")), 0.0)
    assert [o for o in out if isinstance(o, SessionStopped)][0].faults == ("cell_voltage_too_low",)


def test_bcl_timeout_1s_cem_then_rehandshake_and_recover() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.bms.inject(Fault.BCL_STOPS)
    last_bcl = w.frames("BCL")[-1][0]
    w.run_until(4.5)
    to = w.of(Timeout)[0]
    assert to.missing == "BCL" and to.will_retry
    t_to = next(t for t, e in w.events if isinstance(e, Timeout))
    assert t_to - last_bcl == pytest.approx(1.0, abs=0.002)
    cem = w.frames("CEM", True)
    assert cem[0][1].data == bytes.fromhex("FCF0C4FC")
    w.bms.clear(Fault.BCL_STOPS)
    w.run_until(8.0)
    assert w.charger.phase is Phase.CHARGING
    assert w.charger.rehandshakes == 1
    # The re-handshake restarts at CRM 0x00 (identification), not CHM.
    assert Phase.ERROR in w.phases()
    i = w.phases().index(Phase.ERROR)
    assert w.phases()[i + 1] is Phase.IDENTIFICATION


def test_three_rehandshakes_then_failed() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.bms.inject(Fault.BCL_STOPS)
    w.run_until(60.0, stop=lambda: w.charger.phase is Phase.FAILED)
    timeouts = w.of(Timeout)
    assert [t.attempt for t in timeouts] == [0, 1, 2, 3]
    assert [t.will_retry for t in timeouts] == [True, True, True, False]
    assert w.of(SessionStopped)[-1].reason is StopReason.COMM_FAILED
    assert w.charger.phase is Phase.FAILED
    w.run_until(w.now + 5.0)
    assert w.charger.phase is Phase.FAILED  # latched
    assert w.charger.next_deadline() is None  # silent: CEM only for error_hold_s


def _scripted(now_frames: list[tuple[float, CanFrame]], until: float) -> list[object]:
    """Feed a session scripted BMS frames; return everything it emitted."""
    s = ChargerSession(LIMITS)
    out: list[object] = list(s.start(0.0))
    t = 0.0
    pending = sorted(now_frames, key=lambda x: x[0])
    while t < until:
        nd = s.next_deadline()
        nxt = min([until] + ([nd] if nd is not None else []) + [p[0] for p in pending[:1]])
        t = max(t, nxt)
        while pending and pending[0][0] <= t:
            out += s.handle_frame(pending.pop(0)[1], t)
        out += s.tick(t)
    return out


def _bms_tp(pgn: int, payload: bytes) -> list[CanFrame]:
    n = (len(payload) + 6) // 7
    frames = [
        CanFrame(
            0x1CEC56F4,
            bytes([0x10, len(payload), 0, n, 0xFF]) + pgn.to_bytes(3, "little"),
        )
    ]
    for i in range(n):
        chunk = payload[i * 7 : i * 7 + 7]
        frames.append(CanFrame(0x1CEB56F4, bytes([i + 1]) + chunk.ljust(7, b"\xff")))
    return frames


BHM = CanFrame(0x182756F4, bytes.fromhex("A510"))
BRM = _bms_tp(0x0200, C.encode("BRM", {"BRM_ProtocolVersion": 0x101, "BRM_BatteryType": 3}))
BCP = _bms_tp(
    0x0600,
    C.encode(
        "BCP",
        {"BCP_MaxCellVoltage": 3.65, "BCP_MaxChargeCurrent": -200, "BCP_MaxChargeVoltage": 400},
    ),
)
BRO_AA = CanFrame(0x100956F4, b"\xaa")
BRO_00 = CanFrame(0x100956F4, b"\x00")


def _seq(frames: list[CanFrame], t0: float) -> list[tuple[float, CanFrame]]:
    return [(t0 + i * 0.002, f) for i, f in enumerate(frames)]


def _timeouts(out: list[object]) -> list[Timeout]:
    return [o for o in out if isinstance(o, Timeout)]


def _cem(out: list[object]) -> list[bytes]:
    return [o.data for o in out if isinstance(o, CanFrame) and o.arbitration_id == 0x081FF456]


def test_no_bhm_for_5s_goes_on_as_2011_bms() -> None:
    out = _scripted([], 5.5)
    crm = [o for o in out if isinstance(o, CanFrame) and o.arbitration_id == 0x1801F456]
    assert crm and crm[0].data[0] == 0x00
    assert not _timeouts(out)


def test_brm_timeout_5s() -> None:
    out = _scripted([(0.1, BHM)], 6.0)
    assert _timeouts(out)[0].missing == "BRM"
    assert _cem(out)[0] == bytes.fromhex("FDF0C0FC")


def test_bcp_timeout_5s() -> None:
    out = _scripted([(0.1, BHM), *_seq(BRM, 0.5)], 6.0)
    assert _timeouts(out)[0].missing == "BCP"
    assert _cem(out)[0] == bytes.fromhex("FCF1C0FC")


def test_bro_timeout_5s_without_any_bro() -> None:
    out = _scripted([(0.1, BHM), *_seq(BRM, 0.5), *_seq(BCP, 1.0)], 6.5)
    assert _timeouts(out)[0].missing == "BRO"
    assert _cem(out)[0] == bytes.fromhex("FCF4C0FC")


def test_bro_ready_timeout_60s() -> None:
    bros = [(1.2 + i * 0.25, BRO_00) for i in range(250)]
    script = [(0.1, BHM), *_seq(BRM, 0.5), *_seq(BCP, 1.0), *bros]
    assert not _timeouts(_scripted(script, 60.9))  # BRO 0x00 keeps the 5 s limit at bay
    out = _scripted(script, 61.1)
    assert _timeouts(out)[0].missing == "BRO"


def test_first_bcl_and_bcs_timeouts() -> None:
    base = [(0.1, BHM), *_seq(BRM, 0.5), *_seq(BCP, 1.0), (1.2, BRO_AA)]
    out = _scripted(base, 7.0)
    assert _timeouts(out)[0].missing == "BCL"
    bcl = CanFrame(0x181056F4, bytes.fromhex("D80FD00702"))
    bcls = [(1.3 + i * 0.05, bcl) for i in range(200)]
    out = _scripted(base + bcls, 8.0)
    assert _timeouts(out)[0].missing == "BCS"
    assert _cem(out)[0] == bytes.fromhex("FCF0C1FC")


def _charging_script() -> list[tuple[float, CanFrame]]:
    bcl = CanFrame(0x181056F4, bytes.fromhex("D80FD00702"))
    return [
        (0.1, BHM),
        *_seq(BRM, 0.5),
        *_seq(BCP, 1.0),
        (1.2, BRO_AA),
        *[(1.3 + i * 0.05, bcl) for i in range(40)],
    ]


def test_bst_and_bsd_timeouts_after_cst() -> None:
    s = ChargerSession(LIMITS)
    t = 0.0
    s.start(t)
    for t, f in _charging_script():
        s.handle_frame(f, t)
        s.tick(t)
    assert s.phase is Phase.CHARGING
    out = list(s.stop(t, StopReason.MANUAL))
    for k in range(1, 1200):
        out += s.tick(t + k * 0.01)
    to = _timeouts(out)
    assert to[0].missing == "BST" and not to[0].will_retry
    assert _cem(out)[0] == bytes.fromhex("FCF0D0FC")
    assert s.phase is Phase.ENDED
    # BST arrives but no BSD: BSD timeout at 10 s.
    s2 = ChargerSession(LIMITS)
    s2.start(0.0)
    for t, f in _charging_script():
        s2.handle_frame(f, t)
        s2.tick(t)
    out = list(s2.stop(t, StopReason.MANUAL))
    out += s2.handle_frame(CanFrame(0x101956F4, bytes.fromhex("400000F0")), t + 0.02)
    for k in range(1, 1100):
        out += s2.tick(t + k * 0.01)
    assert _timeouts(out)[0].missing == "BSD"
    assert _cem(out)[0] == bytes.fromhex("FCF0C0FD")


def test_bem_from_bms_triggers_rehandshake() -> None:
    s = ChargerSession(LIMITS)
    s.start(0.0)
    t = 0.0
    for t, f in _charging_script():
        s.handle_frame(f, t)
    out = s.handle_frame(CanFrame(0x081E56F4, bytes.fromhex("F0F0F1FC")), t)
    assert [o for o in out if isinstance(o, BmsError)][0].timeouts == ("CCS",)
    assert s.phase is Phase.ERROR


def test_stop_with_charger_faults_encodes_cst() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.do(w.charger.stop(w.now, StopReason.CHARGER_FAULT, (ChargerFault.EMERGENCY_STOP,)))
    assert w.frames("CST", True)[0][1].data == bytes.fromhex("1000F1F0")


def test_bad_frames_become_rejected_events_and_session_carries_on() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(2.0)
    w.bms.inject(Fault.GARBAGE)
    w.bms.inject(Fault.WRONG_DLC)
    w.run_until(2.5)
    w.bms.clear(Fault.WRONG_DLC)
    w.run_until(3.5)
    rejected = w.of(FrameRejected)
    kinds = {r.kind for r in rejected}
    assert kinds == {"unknown", "malformed"}
    assert w.charger.phase is Phase.CHARGING


def test_broken_tp_is_rejected_and_next_bcs_reassembles() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    n_status = len(w.of(PackStatus))
    w.bms.inject(Fault.BROKEN_TP)
    w.run_until(3.6)
    assert any("BAD_SEQUENCE" in r.detail for r in w.of(FrameRejected))
    w.bms.clear(Fault.BROKEN_TP)
    w.run_until(4.5)
    assert len(w.of(PackStatus)) > n_status
    assert w.charger.phase is Phase.CHARGING


def test_condition_reached_stop_and_csd_time_energy() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(125.0)
    w.do(w.charger.stop(w.now, StopReason.CONDITION_REACHED))
    w.run_until(128.0)
    assert w.frames("CST", True)[0][1].data == bytes.fromhex("0100F0F0")
    csd = C.decode_frame(w.frames("CSD", True)[0][1]).signals
    assert csd["CSD_ChargeTime"] == 2  # minutes since charging began
    # ~ 250 A at ~370 V for ~2 min, integrated by the session from the measurements
    assert csd["CSD_Energy"] == pytest.approx(w.charger.energy_kwh, abs=0.1)
    assert 2.0 < csd["CSD_Energy"] < 4.0
    assert csd["CSD_ChargerNumber"] == 1
    ccs = C.decode_frame(w.frames("CCS", True)[-1][1]).signals
    assert ccs["CCS_ChargeTime"] == 2
    assert ccs["CCS_OutputCurrent"] < 0  # GB/T sign on the wire: charging is negative


def test_bms_ccs_timeout_bem_then_rehandshake() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    ccs_id = C.frame_id("CCS")
    w.charger_filter = lambda f: None if f.arbitration_id == ccs_id else f
    w.run_until(5.0)
    assert [e.timeouts for e in w.of(BmsError)][0] == ("CCS",)
    assert w.bms.counters.timeouts == ["CCS"]
    assert w.frames("BEM", False)[0][1].data == bytes.fromhex("F0F0F1FC")
    w.charger_filter = None
    w.run_until(9.0)
    assert w.charger.phase is Phase.CHARGING and w.charger.rehandshakes == 1


def test_late_tick_keeps_the_ccs_grid() -> None:
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    ccs = w.frames("CCS")
    grid0 = ccs[0][0]
    due = w.charger._periodic["CCS"][1]
    late = due + 0.125  # the loop was 125 ms late
    out = w.charger.tick(late)
    assert sum(1 for o in out if isinstance(o, CanFrame) and o.arbitration_id == 0x1812F456) == 1
    nxt = w.charger._periodic["CCS"][1]
    assert nxt > late and nxt - late <= 0.05 + 1e-9
    assert ((nxt - grid0) / 0.05) == pytest.approx(round((nxt - grid0) / 0.05), abs=1e-6)


def test_bmv_long_tp_transfer_gives_cell_voltages() -> None:
    from drivers.can.events import CellVoltages

    w = make_wire()
    w.bms.send_bmv = True
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    cells = w.of(CellVoltages)
    assert cells and len(cells[0].cells) == 112  # 224 bytes = 32 TP.DT packets
    assert all(3.0 < v < 3.6 and g == 0 for v, g in cells[0].cells)
    assert w.charger.phase is Phase.CHARGING


def test_sim_bms_sends_bsd_only_after_the_chargers_cst() -> None:
    """GB/T 27930 phase 6: BSD follows the charger's CST. With the CST withheld the simulated
    BMS keeps repeating BST (and gives BEM at 5 s); once CST passes, BSD follows."""
    w = make_wire()
    cst_id = w.charger.codec.frame_id("CST")
    w.charger_filter = lambda f: None if f.arbitration_id == cst_id else f
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    w.bms.inject(Fault.BST_FAULT)
    w.run_until(4.0)
    assert w.frames("BST", from_charger=False)
    assert w.frames("BSD", from_charger=False) == []
    w.charger_filter = None
    w.run_until(5.0)
    assert w.frames("BSD", from_charger=False)
