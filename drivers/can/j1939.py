"""SAE J1939-21 transport protocol (TP.CM / TP.DT), sans-I/O, both directions.

GB/T 27930 links are point-to-point, so one `TransportSession` serves one pair of addresses: at
most one inbound and one outbound transfer at a time (J1939 allows one connection per direction
between two nodes). Feed it the peer's TP frames with `handle_frame(frame, now)`, call
`tick(now)` by `next_deadline()`, start a transfer with `send(pgn, payload, now)`. Each call
returns outputs: `CanFrame`s to put on the bus, and `MessageReceived` / `TransferSent` /
`TransferAborted` events.

Timers (J1939-21 section 5.10.2.4): T1 gap between DTs, T2 first DT after our CTS, T3 CTS or
EndOfMsgAck after our RTS or last DT of a block, T4 next CTS after a hold (CTS with 0 packets).
Tr (respond within 200 ms) and Th (repeat hold every 500 ms) are met by construction: this
receiver answers in the same call and never holds.

A new RTS while an inbound transfer is open replaces it: the peer has evidently given up on the
old one (a BMS repeats BCS every 250 ms), so we drop it without an abort frame and answer the
new RTS. A `send()` while an outbound transfer is open aborts the old one the same way, with an
abort frame, since the peer still holds state for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from drivers.can.codec import CanFrame, can_id, id_fields

PF_TP_CM = 0xEC
PF_TP_DT = 0xEB
TP_PRIORITY = 7
GLOBAL_ADDR = 0xFF

CM_RTS = 0x10
CM_CTS = 0x11
CM_EOMA = 0x13
CM_BAM = 0x20
CM_ABORT = 0xFF

MIN_SIZE = 9
MAX_SIZE = 1785


class AbortReason(IntEnum):
    BUSY = 1
    RESOURCES = 2
    TIMEOUT = 3
    CTS_WHILE_SENDING = 4
    MAX_RETRANSMIT = 5
    UNEXPECTED_DATA = 6
    BAD_SEQUENCE = 7
    DUPLICATE_SEQUENCE = 8
    OTHER = 250
    UNSPECIFIED = 255  # older stacks send 0xFF
    SUPERSEDED = 1000  # local only: a new RTS/send replaced the open transfer


@dataclass(frozen=True, slots=True)
class TpTimers:
    t1_s: float = 0.75
    t2_s: float = 1.25
    t3_s: float = 1.25
    t4_s: float = 1.05
    tr_s: float = 0.2
    th_s: float = 0.5
    bam_gap_s: float = 0.05


@dataclass(frozen=True, slots=True)
class MessageReceived:
    pgn: int
    payload: bytes
    broadcast: bool = False


@dataclass(frozen=True, slots=True)
class TransferSent:
    pgn: int
    size: int


@dataclass(frozen=True, slots=True)
class TransferAborted:
    pgn: int
    reason: AbortReason
    inbound: bool
    by_peer: bool
    detail: str = ""


TpOutput = CanFrame | MessageReceived | TransferSent | TransferAborted


def packets_for(size: int) -> int:
    return (size + 6) // 7


def _pgn_bytes(pgn: int) -> bytes:
    return pgn.to_bytes(3, "little")


def _reason(raw: int) -> AbortReason:
    try:
        return AbortReason(raw)
    except ValueError:
        return AbortReason.OTHER


@dataclass(slots=True)
class _Inbound:
    pgn: int
    size: int
    packets: int
    max_per_cts: int
    broadcast: bool
    data: bytearray = field(default_factory=bytearray)
    next_seq: int = 1
    block_end: int = 0  # last sequence number of the current CTS block
    deadline: float = 0.0


@dataclass(slots=True)
class _Outbound:
    pgn: int
    payload: bytes
    packets: int
    broadcast: bool
    next_seq: int = 1  # BAM: next packet to send
    deadline: float = 0.0
    holding: bool = False


class TransportSession:
    """J1939 TP between `own` and `peer` addresses."""

    def __init__(
        self,
        own: int,
        peer: int,
        timers: TpTimers | None = None,
        max_packets_per_cts: int = 0xFF,
    ) -> None:
        self.own = own
        self.peer = peer
        self.timers = timers or TpTimers()
        self.max_packets_per_cts = max_packets_per_cts
        self._in: _Inbound | None = None
        self._out: _Outbound | None = None
        self.cm_id = can_id(TP_PRIORITY, PF_TP_CM, peer, own)
        self.dt_id = can_id(TP_PRIORITY, PF_TP_DT, peer, own)
        self.bam_cm_id = can_id(TP_PRIORITY, PF_TP_CM, GLOBAL_ADDR, own)
        self.bam_dt_id = can_id(TP_PRIORITY, PF_TP_DT, GLOBAL_ADDR, own)
        self.peer_cm_id = can_id(TP_PRIORITY, PF_TP_CM, own, peer)
        self.peer_dt_id = can_id(TP_PRIORITY, PF_TP_DT, own, peer)
        # counters
        self.received = 0
        self.sent = 0
        self.aborted = 0
        self.stray = 0  # DT or CM frames with no matching transfer

    # -- state ---------------------------------------------------------------------------------

    @property
    def inbound_open(self) -> bool:
        return self._in is not None

    @property
    def outbound_open(self) -> bool:
        return self._out is not None

    def next_deadline(self) -> float | None:
        ds = [t.deadline for t in (self._in, self._out) if t is not None]
        return min(ds) if ds else None

    def is_tp_frame(self, frame: CanFrame) -> bool:
        _, pf, dest, source = id_fields(frame.arbitration_id)
        return (
            pf in (PF_TP_CM, PF_TP_DT) and source == self.peer and dest in (self.own, GLOBAL_ADDR)
        )

    # -- inputs --------------------------------------------------------------------------------

    def handle_frame(self, frame: CanFrame, now: float) -> list[TpOutput]:
        """A TP.CM or TP.DT frame from the peer. Raises ValueError for frames of other kinds."""
        _, pf, dest, source = id_fields(frame.arbitration_id)
        if source != self.peer or dest not in (self.own, GLOBAL_ADDR):
            raise ValueError(f"not for this TP session: {frame}")
        data = frame.data
        if len(data) != 8:
            # J1939 TP frames are always 8 bytes; a short one is malformed, drop it whole.
            self.stray += 1
            return []
        if pf == PF_TP_DT:
            return self._on_dt(data, dest == GLOBAL_ADDR, now)
        if pf == PF_TP_CM:
            return self._on_cm(data, dest == GLOBAL_ADDR, now)
        raise ValueError(f"not a TP frame: {frame}")

    def send(self, pgn: int, payload: bytes, now: float, broadcast: bool = False) -> list[TpOutput]:
        """Start sending `payload` (9..1785 bytes) with RTS/CTS, or BAM when `broadcast`."""
        size = len(payload)
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"TP payload must be {MIN_SIZE}..{MAX_SIZE} bytes, got {size}")
        out: list[TpOutput] = []
        if self._out is not None:
            out += self._abort_out(AbortReason.SUPERSEDED, "replaced by a new send", now)
        n = packets_for(size)
        t = _Outbound(pgn, bytes(payload), n, broadcast)
        self._out = t
        if broadcast:
            out.append(
                CanFrame(
                    self.bam_cm_id,
                    bytes([CM_BAM, size & 0xFF, size >> 8, n, 0xFF]) + _pgn_bytes(pgn),
                )
            )
            t.deadline = now + self.timers.bam_gap_s
        else:
            out.append(
                CanFrame(
                    self.cm_id,
                    bytes([CM_RTS, size & 0xFF, size >> 8, n, 0xFF]) + _pgn_bytes(pgn),
                )
            )
            t.deadline = now + self.timers.t3_s
        return out

    def tick(self, now: float) -> list[TpOutput]:
        out: list[TpOutput] = []
        t_in = self._in
        if t_in is not None and now >= t_in.deadline:
            self._in = None
            self.aborted += 1
            if not t_in.broadcast:
                out.append(self._abort_frame(t_in.pgn, AbortReason.TIMEOUT))
            out.append(
                TransferAborted(t_in.pgn, AbortReason.TIMEOUT, True, False, "no TP.DT in time")
            )
        t_out = self._out
        if t_out is not None and now >= t_out.deadline:
            if t_out.broadcast:
                out += self._bam_next(t_out, now)
            else:
                what = "next CTS after hold" if t_out.holding else "CTS or EndOfMsgAck"
                out += self._abort_out(AbortReason.TIMEOUT, f"no {what} in time", now)
        return out

    # -- inbound -------------------------------------------------------------------------------

    def _on_cm(self, data: bytes, broadcast: bool, now: float) -> list[TpOutput]:
        control = data[0]
        pgn = data[5] | data[6] << 8 | data[7] << 16
        if control in (CM_RTS, CM_BAM):
            return self._on_rts(data, pgn, control == CM_BAM or broadcast, now)
        if control == CM_CTS:
            return self._on_cts(data, pgn, now)
        if control == CM_EOMA:
            t = self._out
            if t is None or t.pgn != pgn or t.broadcast:
                self.stray += 1
                return []
            self._out = None
            self.sent += 1
            return [TransferSent(pgn, len(t.payload))]
        if control == CM_ABORT:
            out: list[TpOutput] = []
            reason = _reason(data[1])
            if self._in is not None and self._in.pgn == pgn:
                self._in = None
                self.aborted += 1
                out.append(TransferAborted(pgn, reason, True, True))
            if self._out is not None and self._out.pgn == pgn:
                self._out = None
                self.aborted += 1
                out.append(TransferAborted(pgn, reason, False, True))
            if not out:
                self.stray += 1
            return out
        self.stray += 1
        return []

    def _on_rts(self, data: bytes, pgn: int, broadcast: bool, now: float) -> list[TpOutput]:
        out: list[TpOutput] = []
        size = data[1] | data[2] << 8
        packets = data[3]
        if self._in is not None:
            old = self._in
            self._in = None
            self.aborted += 1
            out.append(
                TransferAborted(old.pgn, AbortReason.SUPERSEDED, True, False, "new RTS from peer")
            )
        if not MIN_SIZE <= size <= MAX_SIZE or packets != packets_for(size):
            if not broadcast:
                out.append(self._abort_frame(pgn, AbortReason.OTHER))
            self.aborted += 1
            out.append(
                TransferAborted(
                    pgn, AbortReason.OTHER, True, False, f"bad RTS size {size} / {packets} packets"
                )
            )
            return out
        max_per_cts = data[4] if not broadcast else 0xFF
        t = _Inbound(pgn, size, packets, max_per_cts or 0xFF, broadcast)
        self._in = t
        if broadcast:
            t.block_end = packets
            t.deadline = now + self.timers.t1_s
        else:
            out.append(self._cts(t, now))
        return out

    def _cts(self, t: _Inbound, now: float) -> CanFrame:
        n = min(t.packets - t.next_seq + 1, t.max_per_cts, self.max_packets_per_cts)
        t.block_end = t.next_seq + n - 1
        t.deadline = now + self.timers.t2_s
        return CanFrame(self.cm_id, bytes([CM_CTS, n, t.next_seq, 0xFF, 0xFF]) + _pgn_bytes(t.pgn))

    def _on_dt(self, data: bytes, broadcast: bool, now: float) -> list[TpOutput]:
        t = self._in
        if t is None or t.broadcast != broadcast:
            self.stray += 1
            return []
        seq = data[0]
        if seq != t.next_seq:
            reason = (
                AbortReason.DUPLICATE_SEQUENCE if seq < t.next_seq else AbortReason.BAD_SEQUENCE
            )
            self._in = None
            self.aborted += 1
            out: list[TpOutput] = []
            if not broadcast:
                out.append(self._abort_frame(t.pgn, reason))
            out.append(
                TransferAborted(
                    t.pgn, reason, True, False, f"got packet {seq}, expected {t.next_seq}"
                )
            )
            return out
        t.data += data[1:8]
        t.next_seq += 1
        t.deadline = now + self.timers.t1_s
        if t.next_seq <= t.block_end:
            return []
        if t.next_seq <= t.packets:
            return [self._cts(t, now)]
        self._in = None
        self.received += 1
        payload = bytes(t.data[: t.size])
        if broadcast:
            return [MessageReceived(t.pgn, payload, True)]
        eoma = CanFrame(
            self.cm_id,
            bytes([CM_EOMA, t.size & 0xFF, t.size >> 8, t.packets, 0xFF]) + _pgn_bytes(t.pgn),
        )
        return [eoma, MessageReceived(t.pgn, payload)]

    # -- outbound ------------------------------------------------------------------------------

    def _on_cts(self, data: bytes, pgn: int, now: float) -> list[TpOutput]:
        t = self._out
        if t is None or t.pgn != pgn or t.broadcast:
            self.stray += 1
            return []
        n, start = data[1], data[2]
        if n == 0:
            t.holding = True
            t.deadline = now + self.timers.t4_s
            return []
        if not 1 <= start <= t.packets:
            return self._abort_out(AbortReason.OTHER, f"CTS asks for packet {start}", now)
        t.holding = False
        out: list[TpOutput] = []
        for seq in range(start, min(start + n, t.packets + 1)):
            out.append(CanFrame(self.dt_id, self._dt_data(t, seq)))
        t.deadline = now + self.timers.t3_s
        return out

    def _dt_data(self, t: _Outbound, seq: int) -> bytes:
        chunk = t.payload[(seq - 1) * 7 : seq * 7]
        return bytes([seq]) + chunk + b"\xff" * (7 - len(chunk))

    def _bam_next(self, t: _Outbound, now: float) -> list[TpOutput]:
        frame = CanFrame(self.bam_dt_id, self._dt_data(t, t.next_seq))
        t.next_seq += 1
        if t.next_seq > t.packets:
            self._out = None
            self.sent += 1
            return [frame, TransferSent(t.pgn, len(t.payload))]
        t.deadline = now + self.timers.bam_gap_s
        return [frame]

    def _abort_out(self, reason: AbortReason, detail: str, now: float) -> list[TpOutput]:
        t = self._out
        assert t is not None
        self._out = None
        self.aborted += 1
        out: list[TpOutput] = []
        if not t.broadcast:
            wire = AbortReason.OTHER if reason is AbortReason.SUPERSEDED else reason
            out.append(self._abort_frame(t.pgn, wire))
        out.append(TransferAborted(t.pgn, reason, False, False, detail))
        return out

    def _abort_frame(self, pgn: int, reason: AbortReason) -> CanFrame:
        return CanFrame(
            self.cm_id, bytes([CM_ABORT, int(reason), 0xFF, 0xFF, 0xFF]) + _pgn_bytes(pgn)
        )
