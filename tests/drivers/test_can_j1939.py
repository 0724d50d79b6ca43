"""J1939 TP (sans-I/O): both directions, BAM, timeouts, aborts, a new RTS over an open one."""

from __future__ import annotations

from drivers.can.codec import BMS_ADDR, CHARGER_ADDR, CanFrame
from drivers.can.j1939 import (
    AbortReason,
    MessageReceived,
    TpOutput,
    TransferAborted,
    TransferSent,
    TransportSession,
)


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def frames(out: list[TpOutput]) -> list[CanFrame]:
    return [o for o in out if isinstance(o, CanFrame)]


def events(out: list[TpOutput]) -> list[object]:
    return [o for o in out if not isinstance(o, CanFrame)]


def charger() -> TransportSession:
    return TransportSession(CHARGER_ADDR, BMS_ADDR)


def bms() -> TransportSession:
    return TransportSession(BMS_ADDR, CHARGER_ADDR)


def test_receive_real_bcp_exchange_byte_exact() -> None:
    c = charger()
    out = c.handle_frame(CanFrame(0x1CEC56F4, h("10 0D 00 02 FF 00 06 00")), 0.0)
    assert frames(out) == [CanFrame(0x1CECF456, h("11 02 01 FF FF 00 06 00"))]
    assert c.handle_frame(CanFrame(0x1CEB56F4, h("01 72 01 DA 05 2A 02 A5")), 0.01) == []
    out = c.handle_frame(CanFrame(0x1CEB56F4, h("02 10 73 08 03 C6 0E FF")), 0.02)
    assert frames(out) == [CanFrame(0x1CECF456, h("13 0D 00 02 FF 00 06 00"))]
    assert events(out) == [MessageReceived(0x0600, h("72 01 DA 05 2A 02 A5 10 73 08 03 C6 0E"))]
    assert not c.inbound_open and c.received == 1


def test_both_directions_round_trip_49_bytes_with_cts_window() -> None:
    payload = bytes(range(49))
    sender = bms()
    receiver = TransportSession(CHARGER_ADDR, BMS_ADDR, max_packets_per_cts=3)
    pending = sender.send(0x0200, payload, 0.0)
    assert frames(pending)[0] == CanFrame(0x1CEC56F4, h("10 31 00 07 FF 00 02 00"))
    got: list[object] = []
    t = 0.0
    # Shuttle frames between the two ends until quiet.
    while pending:
        t += 0.001
        nxt: list[TpOutput] = []
        for f in frames(pending):
            dst = receiver if (f.arbitration_id & 0xFF) == BMS_ADDR else sender
            res = dst.handle_frame(f, t)
            got += events(res)
            nxt += res
        pending = nxt
    assert MessageReceived(0x0200, payload) in got
    assert TransferSent(0x0200, 49) in got
    assert not sender.outbound_open and not receiver.inbound_open


def test_last_dt_padded_with_ff() -> None:
    s = bms()
    s.send(0x1100, h("C5 0E A0 0F 4C 61 4D 00 00"), 0.0)
    out = s.handle_frame(CanFrame(0x1CECF456, h("11 02 01 FF FF 00 11 00")), 0.001)
    assert frames(out) == [
        CanFrame(0x1CEB56F4, h("01 C5 0E A0 0F 4C 61 4D")),
        CanFrame(0x1CEB56F4, h("02 00 00 FF FF FF FF FF")),
    ]


def test_receiver_t2_timeout_after_cts_aborts() -> None:
    c = charger()
    c.handle_frame(CanFrame(0x1CEC56F4, h("10 09 00 02 FF 00 11 00")), 0.0)
    assert c.next_deadline() == 1.25
    assert c.tick(1.2) == []
    out = c.tick(1.25)
    assert frames(out) == [CanFrame(0x1CECF456, h("FF 03 FF FF FF 00 11 00"))]
    assert events(out) == [
        TransferAborted(0x1100, AbortReason.TIMEOUT, True, False, "no TP.DT in time")
    ]
    assert not c.inbound_open


def test_receiver_t1_timeout_between_packets() -> None:
    c = charger()
    c.handle_frame(CanFrame(0x1CEC56F4, h("10 09 00 02 FF 00 11 00")), 0.0)
    c.handle_frame(CanFrame(0x1CEB56F4, h("01 C5 0E A0 0F 4C 61 4D")), 0.1)
    assert c.next_deadline() == 0.1 + 0.75
    out = c.tick(0.86)
    assert isinstance(events(out)[0], TransferAborted)


def test_bad_and_duplicate_sequence_abort() -> None:
    c = charger()
    c.handle_frame(CanFrame(0x1CEC56F4, h("10 31 00 07 FF 00 02 00")), 0.0)
    out = c.handle_frame(CanFrame(0x1CEB56F4, h("02 00 00 00 00 00 00 00")), 0.01)
    assert frames(out) == [CanFrame(0x1CECF456, h("FF 07 FF FF FF 00 02 00"))]
    c.handle_frame(CanFrame(0x1CEC56F4, h("10 31 00 07 FF 00 02 00")), 0.1)
    c.handle_frame(CanFrame(0x1CEB56F4, h("01 00 00 00 00 00 00 00")), 0.11)
    out = c.handle_frame(CanFrame(0x1CEB56F4, h("01 00 00 00 00 00 00 00")), 0.12)
    assert frames(out) == [CanFrame(0x1CECF456, h("FF 08 FF FF FF 00 02 00"))]
    ev = events(out)[0]
    assert isinstance(ev, TransferAborted) and ev.reason is AbortReason.DUPLICATE_SEQUENCE


def test_new_rts_replaces_open_transfer() -> None:
    c = charger()
    c.handle_frame(CanFrame(0x1CEC56F4, h("10 09 00 02 FF 00 11 00")), 0.0)
    c.handle_frame(CanFrame(0x1CEB56F4, h("01 C5 0E A0 0F 4C 61 4D")), 0.01)
    # The BMS gave up and repeats BCS 250 ms later.
    out = c.handle_frame(CanFrame(0x1CEC56F4, h("10 09 00 02 FF 00 11 00")), 0.25)
    assert frames(out) == [CanFrame(0x1CECF456, h("11 02 01 FF FF 00 11 00"))]
    ev = events(out)[0]
    assert isinstance(ev, TransferAborted) and ev.reason is AbortReason.SUPERSEDED
    c.handle_frame(CanFrame(0x1CEB56F4, h("01 C5 0E A0 0F 4C 11 4D")), 0.26)
    out = c.handle_frame(CanFrame(0x1CEB56F4, h("02 00 00 FF FF FF FF FF")), 0.27)
    assert events(out) == [MessageReceived(0x1100, h("C5 0E A0 0F 4C 11 4D 00 00"))]


def test_bad_rts_sizes_are_refused() -> None:
    c = charger()
    out = c.handle_frame(CanFrame(0x1CEC56F4, h("10 05 00 01 FF 00 11 00")), 0.0)
    assert frames(out) == [CanFrame(0x1CECF456, h("FF FA FF FF FF 00 11 00"))]
    out = c.handle_frame(CanFrame(0x1CEC56F4, h("10 31 00 05 FF 00 02 00")), 0.0)
    assert isinstance(events(out)[0], TransferAborted)
    assert not c.inbound_open


def test_peer_abort_closes_transfer_and_real_legacy_abort() -> None:
    c = charger()
    c.handle_frame(CanFrame(0x1CEC56F4, h("10 31 00 07 FF 00 02 00")), 0.0)
    out = c.handle_frame(CanFrame(0x1CEC56F4, h("FF FF FF FF FF 00 02 00")), 0.01)
    assert events(out) == [TransferAborted(0x0200, AbortReason.UNSPECIFIED, True, True)]
    s = bms()
    s.send(0x0600, bytes(13), 0.0)
    out = s.handle_frame(CanFrame(0x1CECF456, h("FF 01 FF FF FF 00 06 00")), 0.01)
    assert events(out) == [TransferAborted(0x0600, AbortReason.BUSY, False, True)]


def test_sender_t3_timeout_and_t4_after_hold() -> None:
    s = bms()
    s.send(0x0600, bytes(13), 0.0)
    out = s.tick(1.25)
    assert frames(out) == [CanFrame(0x1CEC56F4, h("FF 03 FF FF FF 00 06 00"))]
    s.send(0x0600, bytes(13), 2.0)
    assert s.handle_frame(CanFrame(0x1CECF456, h("11 00 01 FF FF 00 06 00")), 2.1) == []
    assert s.next_deadline() == 2.1 + 1.05
    # A hold repeated within Th keeps the connection.
    s.handle_frame(CanFrame(0x1CECF456, h("11 00 01 FF FF 00 06 00")), 2.6)
    assert s.tick(3.2) == []
    out = s.tick(3.66)
    ev = events(out)[0]
    assert isinstance(ev, TransferAborted) and "hold" in ev.detail


def test_sender_t3_after_last_block_waits_for_eoma() -> None:
    s = bms()
    s.send(0x0600, bytes(13), 0.0)
    s.handle_frame(CanFrame(0x1CECF456, h("11 02 01 FF FF 00 06 00")), 0.01)
    assert s.outbound_open
    out = s.handle_frame(CanFrame(0x1CECF456, h("13 0D 00 02 FF 00 06 00")), 0.02)
    assert events(out) == [TransferSent(0x0600, 13)]
    s.send(0x0600, bytes(13), 1.0)
    s.handle_frame(CanFrame(0x1CECF456, h("11 02 01 FF FF 00 06 00")), 1.01)
    out = s.tick(1.01 + 1.25)
    assert isinstance(events(out)[0], TransferAborted)


def test_send_while_open_supersedes_with_abort_frame() -> None:
    s = bms()
    s.send(0x1100, bytes(9), 0.0)
    out = s.send(0x1100, bytes(9), 0.25)
    assert frames(out)[0] == CanFrame(0x1CEC56F4, h("FF FA FF FF FF 00 11 00"))
    assert frames(out)[1].data[0] == 0x10


def test_bam_both_directions_with_pacing_and_t1() -> None:
    s = bms()
    out = s.send(0x1600, bytes(range(20)), 0.0, broadcast=True)
    assert frames(out) == [CanFrame(0x1CECFFF4, h("20 14 00 03 FF 00 16 00"))]
    r = charger()
    got: list[object] = []
    for f in frames(out):
        got += r.handle_frame(f, 0.0)
    t = 0.0
    while s.outbound_open:
        t = s.next_deadline() or t
        for o in s.tick(t):
            if isinstance(o, CanFrame):
                assert o.arbitration_id == 0x1CEBFFF4
                got += r.handle_frame(o, t)
            else:
                got.append(o)
    assert t >= 0.15 - 1e-9  # 3 packets, 50 ms apart
    assert MessageReceived(0x1600, bytes(range(20)), True) in got
    assert TransferSent(0x1600, 20) in got
    # BAM receive: no CTS, T1 gap timeout, no abort frame.
    r.handle_frame(CanFrame(0x1CECFFF4, h("20 14 00 03 FF 00 16 00")), 5.0)
    out = r.tick(5.75)
    assert frames(out) == [] and isinstance(events(out)[0], TransferAborted)


def test_stray_and_short_frames_are_counted_not_raised() -> None:
    c = charger()
    assert c.handle_frame(CanFrame(0x1CEB56F4, h("01 00 00 00 00 00 00 00")), 0.0) == []
    assert c.handle_frame(CanFrame(0x1CEC56F4, h("10 09")), 0.0) == []
    assert c.handle_frame(CanFrame(0x1CEC56F4, h("13 0D 00 02 FF 00 06 00")), 0.0) == []
    assert c.stray == 3
