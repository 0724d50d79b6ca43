"""Ground truth: real GB/T 27930 captures (tests/data/gbt27930, source and licence in its README)
through our codec, J1939 receiver and charger session, and the simulated pack's timing against the real BMS's."""

from __future__ import annotations

import statistics
from pathlib import Path

import can
import pytest

from drivers.can.codec import (
    BMS_ADDR,
    CHARGER_ADDR,
    CanFrame,
    UnknownFrameError,
    default_codec,
    id_fields,
)
from drivers.can.events import (
    ChargeRequest,
    FrameRejected,
    PackIdentified,
    PackLimits,
    PackStatus,
    Phase,
    PhaseChanged,
    SessionStopped,
    StopReason,
    Timeout,
)
from drivers.can.j1939 import MessageReceived, TransferAborted, TransportSession
from drivers.can.session import ChargerSession
from tests.drivers.can_fixtures import LIMITS, make_wire

DATA = Path(__file__).resolve().parents[1] / "data" / "gbt27930"
C = default_codec()
UNKNOWN_IDS = {0x0070F4B5, 0x0073F4B5}

PHASE_OF = {
    "CHM": 0,
    "BHM": 0,
    "CRM": 1,
    "BRM": 1,
    "BCP": 2,
    "CTS": 2,
    "CML": 2,
    "BRO": 2,
    "CRO": 2,
    "BCL": 3,
    "BCS": 3,
    "CCS": 3,
    "BSM": 3,
    "CST": 4,
    "BST": 4,
    "BSD": 5,
    "CSD": 5,
}


def load(name: str) -> list[tuple[float, CanFrame]]:
    path = DATA / name
    if not path.exists():
        pytest.fail(f"capture missing: {path}")
    out = []
    for msg in can.LogReader(str(path)):
        out.append((msg.timestamp, CanFrame(msg.arbitration_id, bytes(msg.data))))
    return out


@pytest.mark.parametrize("name", ["session-timed.log", "session-ok.log"])
def test_every_frame_decodes_and_every_tp_transfer_reassembles(name: str) -> None:
    frames = load(name)
    rx = TransportSession(CHARGER_ADDR, BMS_ADDR)
    decoded: dict[str, int] = {}
    unknown = 0
    rts = 0
    payloads: list[MessageReceived] = []
    peer_aborts = 0
    for t, f in frames:
        if rx.is_tp_frame(f):
            if f.data[0] == 0x10 and id_fields(f.arbitration_id)[1] == 0xEC:
                rts += 1
            for o in rx.handle_frame(f, t):
                if isinstance(o, MessageReceived):
                    payloads.append(o)
                elif isinstance(o, TransferAborted):
                    assert o.by_peer, o  # only the BMS itself may abort a real transfer
                    peer_aborts += 1
            continue
        _, pf, _, source = id_fields(f.arbitration_id)
        if pf in (0xEC, 0xEB) and source == CHARGER_ADDR:
            continue  # the real charger's CTS / EndOfMsgAck
        try:
            d = C.decode_frame(f)
        except UnknownFrameError:
            assert f.arbitration_id in UNKNOWN_IDS, f
            unknown += 1
            continue
        decoded[d.name] = decoded.get(d.name, 0) + 1
    assert rts == len(payloads) + peer_aborts
    assert rx.stray == 0 and rx.aborted == peer_aborts
    for p in payloads:
        d = C.decode_payload(p.pgn, p.payload)
        assert d.name in ("BRM", "BCP", "BCS")
    names = {C.decode_payload(p.pgn, p.payload).name for p in payloads}
    assert names == {"BRM", "BCP", "BCS"}
    assert {"CHM", "BHM", "CRM", "CML", "BRO", "CRO", "BCL", "CCS", "BSM", "CST"} <= set(decoded)
    if name == "session-timed.log":
        assert unknown == 43
        assert {"BST", "BSD", "CSD"} <= set(decoded)
        brm = next(p for p in payloads if p.pgn == 0x0200)
        assert len(brm.payload) == 49
    else:
        assert unknown == 0 and peer_aborts == 0


@pytest.mark.parametrize("name", ["session-timed.log", "session-ok.log"])
def test_message_phases_follow_the_standard_order(name: str) -> None:
    last = 0
    for _, f in load(name):
        if f.arbitration_id in UNKNOWN_IDS or not C.is_known_id(f.arbitration_id):
            continue
        ph = PHASE_OF[C.name_of(f.arbitration_id)]
        # Repeated messages of an earlier phase may trail by a frame or two (CML after BRO...).
        assert ph >= last - 1, (C.name_of(f.arbitration_id), ph, last)
        last = max(last, ph)
    assert last >= 4


def test_replay_real_bms_into_our_session_follows_every_phase() -> None:
    frames = load("session-timed.log")
    bms = [(t, f) for t, f in frames if id_fields(f.arbitration_id)[3] == BMS_ADDR]
    first_crm = next(t for t, f in frames if f.arbitration_id == 0x1801F456)
    last_bhm_before = max(t for t, f in bms if f.arbitration_id == 0x182756F4 and t < first_crm)
    s = ChargerSession(LIMITS)
    out: list[object] = list(s.start(last_bhm_before - 0.01))
    for t, f in bms:
        if t < last_bhm_before:
            continue
        nd = s.next_deadline()
        while nd is not None and nd < t:
            out += s.tick(nd)
            nd = s.next_deadline()
        out += s.handle_frame(f, t)
    t = bms[-1][0]
    for _ in range(200):
        nd = s.next_deadline()
        if nd is None:
            break
        out += s.tick(max(t, nd))
        t = max(t, nd)
    phases = [o.new for o in out if isinstance(o, PhaseChanged)]
    assert phases == [
        Phase.HANDSHAKE,
        Phase.IDENTIFICATION,
        Phase.PARAMETERS,
        Phase.CHARGING,
        Phase.STOPPING,
        Phase.STATISTICS,
        Phase.ENDED,
    ]
    assert not [o for o in out if isinstance(o, (Timeout, FrameRejected))]
    ident = next(o for o in out if isinstance(o, PackIdentified))
    assert ident.vin == "L1NSPGH98NA196202" and ident.battery_type == 3
    lim = next(o for o in out if isinstance(o, PackLimits))
    assert lim.max_charge_current_a > 0
    reqs = [o for o in out if isinstance(o, ChargeRequest)]
    assert len(reqs) > 400 and all(r.current_a >= 0 for r in reqs)
    assert [o for o in out if isinstance(o, PackStatus)]
    stop = next(o for o in out if isinstance(o, SessionStopped))
    assert stop.reason is StopReason.BMS_STOP and "charger_stopped" in stop.detail


def _median_period(times: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


def test_simulated_pack_timing_matches_the_real_bms() -> None:
    frames = load("session-timed.log")

    def real(pred_id: int, first_byte: int | None = None) -> list[float]:
        return [
            t
            for t, f in frames
            if f.arbitration_id == pred_id and (first_byte is None or f.data[0] == first_byte)
        ]

    real_periods = {
        "BCL": _median_period(real(0x181056F4)),
        "BSM": _median_period(real(0x181356F4)),
        "BCS": _median_period(
            [
                t
                for t, f in frames
                if f.arbitration_id == 0x1CEC56F4 and f.data[5:8] == b"\x00\x11\x00"
            ]
        ),
    }
    w = make_wire()
    w.do(w.charger.start(w.now))
    w.run_until(8.0)
    sim = {
        "BCL": _median_period([t for t, _ in w.frames("BCL", False)]),
        "BSM": _median_period([t for t, _ in w.frames("BSM", False)]),
        "BCS": _median_period(
            [
                t
                for t, f, c in w.log
                if not c and f.arbitration_id == 0x1CEC56F4 and f.data[5:8] == b"\x00\x11\x00"
            ]
        ),
    }
    for name, nominal in (("BCL", 0.05), ("BSM", 0.25), ("BCS", 0.25)):
        assert real_periods[name] == pytest.approx(nominal, rel=0.1), (name, real_periods)
        assert sim[name] == pytest.approx(real_periods[name], rel=0.1), (name, sim, real_periods)
