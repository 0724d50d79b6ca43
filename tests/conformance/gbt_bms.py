"""An independent GB/T 27930-2015 BMS (the vehicle/pack side) for conformance tests.

Written from the standard's message tables (docs/gbt27930.md, restated from the
public transcriptions) only: it shares no code with the daemon's CAN room or its
pack simulator. Frames are packed by hand (struct), J1939 TP (RTS/CTS) is its own.

The peer plays every phase with its own timers (handshake CHM/BHM, recognition CRM/BRM over TP,
parameters BCP/CTS/CML/BRO/CRO, charging BCL/BCS/BSM/CCS, end BST/CST/BSD/CSD, errors BEM/CEM)
and checks what the charger sends. Every breach of the standard is recorded in `violations`
(the test asserts on it); figures (CCS gaps, stop latency) are kept for the test to judge.

It is also the charger simulator's electrical load (`pack_voltage_v`, `max_current_a`,
`absorb`): the pack's SOC rises with the current the charger really delivers, so the peer sees
both what the charger says (CCS) and what it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass
from enum import Enum

import can

CHARGER = 0x56
BMS = 0xF4

# PDU format byte (PF) of each message: PGN = PF << 8.
CHM, BHM, CRM, BRM, BCP, CTS, CML, BRO, CRO = 0x26, 0x27, 0x01, 0x02, 0x06, 0x07, 0x08, 0x09, 0x0A
BCL, BCS, CCS, BSM, BST, CST, BSD, CSD, BEM, CEM = (
    0x10,
    0x11,
    0x12,
    0x13,
    0x19,
    0x1A,
    0x1C,
    0x1D,
    0x1E,
    0x1F,
)
TP_CM, TP_DT = 0xEC, 0xEB

# What a charger may send: PF -> (priority, allowed DLCs). CCS: 8 in the table, 7 in practice.
CHARGER_FRAMES: dict[int, tuple[int, set[int]]] = {
    CHM: (6, {3}),
    CRM: (6, {8}),
    CTS: (6, {7}),
    CML: (6, {8}),
    CRO: (4, {1}),
    CCS: (6, {7, 8}),
    CST: (4, {4}),
    CSD: (6, {8}),
    CEM: (2, {4}),
    TP_CM: (7, {8}),
}
NAMES = {
    CHM: "CHM",
    CRM: "CRM",
    CTS: "CTS",
    CML: "CML",
    CRO: "CRO",
    CCS: "CCS",
    CST: "CST",
    CSD: "CSD",
    CEM: "CEM",
    TP_CM: "TP.CM",
    TP_DT: "TP.DT",
}
# Bits a charger must fill with 1 (GB/T §7.9): PF -> per-byte masks.
FILL = {
    CCS: (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFC, 0xFF),
    CST: (0x00, 0x00, 0xF0, 0xF0),
    CEM: (0xFC, 0xF0, 0xC0, 0xFC),
}
# CEM bits (byte, mask) -> the BMS message the charger says it missed, and its time limit.
CEM_BITS = {
    3921: (0, 0x03, "BRM", 5.0),
    3922: (1, 0x03, "BCP", 5.0),
    3923: (1, 0x0C, "BRO", 5.0),
    3924: (2, 0x03, "BCS", 5.0),
    3925: (2, 0x0C, "BCL", 1.0),
    3926: (2, 0x30, "BST", 5.0),
    3927: (3, 0x03, "BSD", 10.0),
}
# BEM bits the BMS sets on its own timeouts.
BEM_BITS = {3901: (0, 0x01), 3902: (0, 0x04), 3903: (1, 0x01), 3904: (1, 0x04)}
BEM_BITS |= {3905: (2, 0x01), 3906: (2, 0x04), 3907: (3, 0x01)}


def frame_id(priority: int, pf: int, dest: int = CHARGER, src: int = BMS) -> int:
    return priority << 26 | pf << 16 | dest << 8 | src


def current_raw(charge_a: float) -> int:
    """GB/T current: 0.1 A/bit, -400 A offset, charging negative."""
    return round((400.0 - charge_a) * 10)


def charge_current(raw: int) -> float:
    return -(raw * 0.1 - 400.0)


class Phase(Enum):
    WAIT_CHM = "wait_chm"
    HANDSHAKE = "handshake"  # BHM
    RECOGNITION = "recognition"  # BRM until CRM 0xAA
    PARAMETERS = "parameters"  # BCP until CML
    READY = "ready"  # BRO until CRO 0xAA
    CHARGING = "charging"
    STOPPING = "stopping"  # BST sent (ours) or CST received
    STATISTICS = "statistics"  # BSD until CSD
    ENDED = "ended"
    ERROR = "error"  # BEM sent or CEM received: wait for CRM 0x00


@dataclass
class BmsPeerConfig:
    serial: int = 1
    manufacturer: str = "CONF"
    vin: str = "LCONFORMANCE00001"
    soc_pct: float = 40.0
    target_soc_pct: float = 50.0  # BST "SOC target reached" here
    capacity_ah: float = 2.0  # small: a session ends within seconds of real time
    cells: int = 110  # 3.0-3.45 V per cell over 0-100 % SOC (BCP allows 3.65 V)
    demand_a: float = 100.0  # BCL current demand
    demand_v: float = 400.0  # BCL voltage demand
    max_current_a: float = 150.0  # BCP
    max_total_v: float = 420.0  # BCP / BHM
    max_cell_v: float = 3.65
    max_temp_c: float = 60.0
    temp_c: float = 25.0
    ready_delay_s: float = 0.3  # BRO 0x00 before BRO 0xAA
    # The charger simulator's output ramp: allowance on top of the standard's stop limits.
    ramp_allowance_s: float = 1.5


@dataclass
class Violation:
    t: float
    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass
class CcsSample:
    t_wall: float  # sender's time (bus timestamp)
    t: float  # our monotonic time
    voltage_v: float
    current_a: float  # into the pack
    minutes: int
    permit: int | None
    demand_a: float  # our BCL demand when it arrived
    delivered_a: float  # what the charger really pushed into the pack at that moment


@dataclass
class _TxTransfer:
    pgn_pf: int
    payload: bytes
    started: float
    next_seq: int = 1
    deadline: float = 0.0
    waiting: str = "cts"  # cts | ack

    @property
    def packets(self) -> int:
        return (len(self.payload) + 6) // 7


class GbtBmsPeer:
    """The BMS. `run()` serves the bus; tests steer it with `request_stop()`, `go_silent()`,
    `resume()`, `set_demand()` and read `violations`, `phase`, `ccs`, `cem_codes`, `cst`."""

    def __init__(self, bus_config: dict[str, object], config: BmsPeerConfig | None = None) -> None:
        self.bus_config = bus_config
        self.cfg = config or BmsPeerConfig()
        self.soc_pct = self.cfg.soc_pct
        self.demand_a = self.cfg.demand_a
        self.phase = Phase.WAIT_CHM
        self.violations: list[Violation] = []
        self.log: list[tuple[float, str, str]] = []
        self.ccs: list[CcsSample] = []
        self.cem_codes: list[int] = []  # every CEM SPN seen (repeats collapsed)
        self.cst: list[bytes] = []  # distinct CST payloads
        self.cml: tuple[float, float, float, float] | None = None
        self.crm_number: int | None = None
        self.csd: tuple[int, float, int] | None = None
        self.sessions = 0  # times we reached CHARGING
        self.energy_kwh = 0.0
        self._delivered_a = 0.0
        self._absorbed_at = 0.0
        self.contactors = False
        self.silent = False
        self.stop_latency_s: float | None = None  # BST/CST/silence -> delivered <= 5 A
        self._bus: can.BusABC | None = None
        self._now = 0.0
        self._phase_at = 0.0
        self._next: dict[str, float] = {}
        self._last_sent: dict[str, float] = {}
        self._last_rx: dict[str, float] = {}
        self._tx: _TxTransfer | None = None
        self._brm_done_at: float | None = None
        self._bcp_done_at: float | None = None
        self._bro_aa_at: float | None = None
        self._bst_at: float | None = None
        self._bst_bits = b""
        self._cst_at: float | None = None
        self._charger_stopped = False
        self._stop_from: float | None = None
        self._stop_limit = 0.0
        self._cml_at: float | None = None
        self._saw_cro = False
        self._crm_aa = False
        self._last_ccs_t: float | None = None
        self._over_since: float | None = None
        self._cem_active = 0
        self._bem: bytes | None = None
        self._wake = asyncio.Event()
        self.ended = asyncio.Event()
        self.charging = asyncio.Event()

    # ---------------------------------------------------------------- the test's controls
    def request_stop(self, byte0: int = 0x01, faults: bytes = b"\x00\x00") -> None:
        """BMS-initiated stop: BST with these reasons (0x01 SOC target reached)."""
        if self.phase in (Phase.CHARGING, Phase.READY, Phase.PARAMETERS):
            self._send_bst(bytes([byte0]) + faults[:2] + b"\xf0")

    def go_silent(self) -> None:
        """The CAN link is lost: the BMS sends nothing (contactors stay closed)."""
        self.silent = True
        self._stop_watch(self._now, 1.0)

    def expect_output_off(self, limit_s: float) -> None:
        """The rig knows of a stop the BMS cannot see (an e-stop): the current must fall to
        <= 5 A within `limit_s` (plus the charger's ramp allowance)."""
        self._stop_watch(self._now, limit_s)

    def resume(self) -> None:
        self.silent = False

    def set_demand(self, amps: float) -> None:
        self.demand_a = amps

    def note(self, what: str, detail: str = "") -> None:
        self.log.append((self._now, what, detail))

    def violate(self, code: str, detail: str) -> None:
        self.violations.append(Violation(self._now, code, detail))

    # ------------------------------------------------------- the charger simulator's load
    def pack_voltage_v(self) -> float:
        return 330.0 + 0.5 * self.soc_pct

    def max_current_a(self) -> float:
        # A battery behind closed contactors takes what the charger pushes; the limit is
        # the charger's job, so this is not the demand (over-current stays visible).
        return 1000.0 if self.contactors else 0.0

    @property
    def delivered_a(self) -> float:
        """The current the charger pushes now (its simulator stops calling when idle)."""
        if time.monotonic() - self._absorbed_at > 0.3:
            return 0.0
        return self._delivered_a

    def absorb(self, current_a: float, dt_s: float) -> None:
        self._delivered_a = current_a
        self._absorbed_at = time.monotonic()
        if current_a <= 0 or dt_s <= 0:
            return
        self.soc_pct = min(
            100.0, self.soc_pct + current_a * dt_s / 3600 / self.cfg.capacity_ah * 100
        )
        self.energy_kwh += current_a * self.pack_voltage_v() * dt_s / 3.6e6

    # ------------------------------------------------------------------------- the loop
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        bus = can.Bus(**self.bus_config)  # type: ignore[arg-type]
        self._bus = bus
        reader = can.AsyncBufferedReader()
        notifier = can.Notifier(bus, [reader], timeout=0.05, loop=loop)
        try:
            while True:
                self._now = loop.time()
                self._tick()
                try:
                    async with asyncio.timeout(0.005):
                        msg = await reader.get_message()
                except TimeoutError:
                    continue
                self._now = loop.time()
                self._receive(msg)
                # Drain whatever else arrived before ticking again.
                while True:
                    try:
                        msg = reader.buffer.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    self._receive(msg)
        finally:
            notifier.stop()
            with contextlib.suppress(Exception):
                bus.shutdown()
            self._bus = None

    def _send(self, name: str, priority: int, pf: int, data: bytes) -> None:
        if self.silent or self._bus is None:
            return
        self._last_sent[name] = self._now
        with contextlib.suppress(can.CanError):
            self._bus.send(
                can.Message(arbitration_id=frame_id(priority, pf), data=data, is_extended_id=True)
            )

    def _due(self, name: str, period_s: float) -> bool:
        if self._now >= self._next.get(name, 0.0):
            self._next[name] = self._now + period_s
            return True
        return False

    def _enter(self, phase: Phase) -> None:
        if phase is not self.phase:
            self.note("phase", phase.value)
            self.phase = phase
            self._phase_at = self._now
            self._next.clear()

    # -------------------------------------------------------------------------- payloads
    def _brm(self) -> bytes:
        c = self.cfg
        body = bytes([0x01, 0x01, 0x00, 0x03])  # V1.1, LiFePO4
        body += struct.pack("<HH", round(c.capacity_ah * 10), round(350.0 * 10))
        body += c.manufacturer.encode("ascii")[:4].ljust(4, b" ")
        body += struct.pack("<I", c.serial)
        body += bytes([2024 - 1985, 6, 1]) + (12).to_bytes(3, "little") + b"\x00\xff"
        body += c.vin.encode("ascii")[:17].ljust(17, b" ")
        body += bytes([1, 1, 6]) + struct.pack("<H", 2024) + b"\xff\xff\xff"
        assert len(body) == 49
        return body

    def _bcp(self) -> bytes:
        c = self.cfg
        return struct.pack(
            "<HHHHBHH",
            round(c.max_cell_v * 100),
            current_raw(c.max_current_a),
            round(c.capacity_ah * 350 / 1000 * 10),
            round(c.max_total_v * 10),
            round(c.max_temp_c + 50),
            round(self.soc_pct * 10),
            round(self.pack_voltage_v() * 10),
        )

    def _cell_v(self) -> float:
        return self.pack_voltage_v() / self.cfg.cells

    def _bcs(self) -> bytes:
        cell = round(self._cell_v() * 100) & 0x0FFF
        remaining = min(600, round((self.cfg.target_soc_pct - self.soc_pct) * 2))
        return struct.pack(
            "<HHHBH",
            round(self.pack_voltage_v() * 10),
            current_raw(self.delivered_a),
            cell | (1 << 12),
            round(self.soc_pct),
            max(0, remaining),
        )

    def _bsm(self) -> bytes:
        t = round(self.cfg.temp_c + 50)
        return bytes([4, t, 2, t - 1, 5, 0x00, 0xC0 | 0x01 << 4])

    def _bsd(self) -> bytes:
        cell = round(self._cell_v() * 100)
        t = round(self.cfg.temp_c + 50)
        return struct.pack("<BHHBB", round(self.soc_pct), cell - 1, cell, t - 1, t)

    # ----------------------------------------------------------------------------- ticks
    def _tick(self) -> None:
        now = self._now
        self._tp_tick()
        self._watch_current()
        if self.silent:
            return
        p = self.phase
        if p is Phase.HANDSHAKE:
            if self._due("BHM", 0.25):
                self._send("BHM", 6, BHM, struct.pack("<H", round(self.cfg.max_total_v * 10)))
            self._expect(30.0, 3901)
        elif p is Phase.RECOGNITION:
            if self._tx is None and self._due("BRM", 0.25):
                self._tp_send(BRM, self._brm())
            if self._brm_done_at is not None and now - self._brm_done_at > 5.0:
                self._bem_timeout(3902)
        elif p is Phase.PARAMETERS:
            if self._tx is None and self._cml_at is None and self._due("BCP", 0.5):
                self._tp_send(BCP, self._bcp())
            bcp_at = self._bcp_done_at
            if bcp_at is not None and self._cml_at is None and now - bcp_at > 5.0:
                self._bem_timeout(3903)
            if self._cml_at is not None:
                self._enter(Phase.READY)
        elif p is Phase.READY:
            ready = now - self._phase_at >= self.cfg.ready_delay_s
            if self._due("BRO", 0.25):
                if ready and self._bro_aa_at is None:
                    self._bro_aa_at = now
                    self.contactors = True
                self._send("BRO", 4, BRO, b"\xaa" if ready else b"\x00")
            if self._bro_aa_at is not None:
                waited = now - self._bro_aa_at
                if (not self._saw_cro and waited > 5.0) or waited > 60.0:
                    self._bem_timeout(3904)
        elif p is Phase.CHARGING:
            if self._due("BCL", 0.05):
                self._send(
                    "BCL",
                    6,
                    BCL,
                    struct.pack(
                        "<HHB", round(self.cfg.demand_v * 10), current_raw(self.demand_a), 0x02
                    ),
                )
            if self._due("BSM", 0.25):
                self._send("BSM", 6, BSM, self._bsm())
            # A BCS still in transfer skips its period (one TP transfer at a time).
            if self._due("BCS", 0.25) and self._tx is None:
                self._tp_send(BCS, self._bcs())
            since = self._last_ccs_t if self._last_ccs_t is not None else self._phase_at
            if now - since > 1.0:
                self._bem_timeout(3905)
            elif self.soc_pct >= self.cfg.target_soc_pct:
                self.request_stop(0x01)
        elif p is Phase.STOPPING:
            if self._bst_at is not None:
                if self._due("BST", 0.01):
                    self._send("BST", 4, BST, self._bst_bits)
                if self._cst_at is None and now - self._bst_at > 5.0:
                    self._bem_timeout(3906)
        elif p is Phase.STATISTICS:
            if self._charger_stopped and self._cst_at is not None and now - self._cst_at < 0.25:
                # Answering the charger's CST: BST 'charger stopped' every 10 ms, then BSD.
                if self._due("BST", 0.01):
                    self._send("BST", 4, BST, self._bst_bits)
            elif self._due("BSD", 0.25):
                self._send("BSD", 6, BSD, self._bsd())
            start = self._bst_at if self._bst_at is not None else self._cst_at
            if start is not None and now - start > 10.0:
                self._bem_timeout(3907)
        elif p is Phase.ERROR and self._bem is not None and self._due("BEM", 0.25):
            self._send("BEM", 2, BEM, self._bem)

    def _expect(self, limit_s: float, spn: int) -> None:
        if self._now - self._phase_at > limit_s:
            self._bem_timeout(spn)

    def _bem_timeout(self, spn: int) -> None:
        """Our own timer expired: the charger was late. BEM every 250 ms, wait for CRM 0x00."""
        self.violate("bem", f"BMS timeout SPN{spn} in {self.phase.value}")
        data = bytearray(b"\xf0\xf0\xf0\xfc")
        byte, mask = BEM_BITS[spn]
        data[byte] |= mask
        self._bem = bytes(data)
        self.contactors = False
        self._tx = None
        self._enter(Phase.ERROR)

    def _send_bst(self, bits: bytes) -> None:
        self._bst_bits = bits
        self._bst_at = self._now
        self.note("bst", bits.hex())
        self._enter(Phase.STOPPING)
        self._stop_watch(self._now, 10.0)

    def _stop_watch(self, since: float, limit_s: float) -> None:
        if self._stop_from is None:
            self._stop_from = since
            self._stop_limit = limit_s

    def _watch_current(self) -> None:
        """After a stop (BST, CST, lost link), the delivered current must fall to <= 5 A."""
        if self._stop_from is None or self.stop_latency_s is not None:
            return
        elapsed = self._now - self._stop_from
        if self.delivered_a <= 5.0:
            self.stop_latency_s = elapsed
            self.note("stopped", f"{elapsed:.3f}s")
            self.contactors = False
        elif elapsed > self._stop_limit + self.cfg.ramp_allowance_s:
            self.violate(
                "output_not_stopped",
                f"{self.delivered_a:.1f} A still flowing {elapsed:.2f} s after the stop",
            )
            self.stop_latency_s = elapsed

    # ----------------------------------------------------------------------- J1939 TP out
    def _tp_send(self, pf: int, payload: bytes) -> None:
        tx = _TxTransfer(pf, payload, self._now, deadline=self._now + 1.25)
        self._tx = tx
        rts = struct.pack("<BHBB", 0x10, len(payload), tx.packets, 0xFF) + bytes([0, pf, 0])
        self._send("RTS", 7, TP_CM, rts)

    def _tp_tick(self) -> None:
        tx = self._tx
        if tx is None or self._now <= tx.deadline:
            return
        what = "CTS" if tx.waiting == "cts" else "EndOfMsgAck"
        self.violate("tp_timeout", f"no {what} for PGN 0x{tx.pgn_pf:02X}00 within T3 (1.25 s)")
        self._send("ABORT", 7, TP_CM, bytes([0xFF, 3, 0xFF, 0xFF, 0xFF, 0, tx.pgn_pf, 0]))
        self._tx = None

    def _tp_cm(self, data: bytes) -> None:
        control = data[0]
        pgn = data[5] | data[6] << 8 | data[7] << 16
        tx = self._tx
        if control == 0x10 or control == 0x20:
            self.violate(
                "unexpected_tp", "the charger opened a TP transfer (all its messages fit 8 B)"
            )
            return
        if tx is None or pgn != tx.pgn_pf << 8:
            if control == 0xFF:
                self.violate("tp_aborted", f"charger aborted PGN 0x{pgn:04X}: reason {data[1]}")
            elif control in (0x11, 0x13) and tx is None:
                # A late answer to a transfer we already gave up on; noted, not judged.
                self.note("tp_late", data.hex())
            else:
                self.violate("tp_wrong_pgn", f"TP.CM {data.hex()} while sending {tx and tx.pgn_pf}")
            return
        if control == 0x11:  # CTS
            count, nxt = data[1], data[2]
            if data[3] != 0xFF or data[4] != 0xFF:
                self.violate("tp_fill", f"CTS bytes 4-5 not 0xFF: {data.hex()}")
            if count == 0:
                tx.deadline = self._now + 1.05  # hold (T4)
                return
            if not 1 <= nxt <= tx.packets or nxt + count - 1 > tx.packets:
                self.violate("tp_bad_cts", f"CTS {count} from {nxt} of {tx.packets} packets")
                self._tx = None
                return
            for seq in range(nxt, nxt + count):
                chunk = tx.payload[(seq - 1) * 7 : seq * 7].ljust(7, b"\xff")
                self._send("DT", 7, TP_DT, bytes([seq]) + chunk)
            tx.waiting = "ack" if nxt + count - 1 == tx.packets else "cts"
            tx.deadline = self._now + 1.25
        elif control == 0x13:  # EndOfMsgAck
            size = data[1] | data[2] << 8
            if size != len(tx.payload) or data[3] != tx.packets:
                self.violate("tp_bad_ack", f"EndOfMsgAck {data.hex()} for {len(tx.payload)} B")
            if tx.waiting != "ack":
                self.violate("tp_early_ack", f"EndOfMsgAck before every packet: {data.hex()}")
            self._tp_done(tx)
        elif control == 0xFF:
            self.violate("tp_aborted", f"charger aborted PGN 0x{pgn:04X}: reason {data[1]}")
            self._tx = None

    def _tp_done(self, tx: _TxTransfer) -> None:
        self._tx = None
        name = {BRM: "BRM", BCP: "BCP", BCS: "BCS"}.get(tx.pgn_pf, "?")
        self._last_sent[name] = self._now
        if tx.pgn_pf == BRM and self._brm_done_at is None:
            self._brm_done_at = self._now
        elif tx.pgn_pf == BCP and self._bcp_done_at is None:
            self._bcp_done_at = self._now

    # ---------------------------------------------------------------------------- receive
    def _receive(self, msg: can.Message) -> None:
        if not msg.is_extended_id or msg.is_error_frame:
            self.violate("bad_frame", f"not a 29-bit data frame: {msg}")
            return
        cid = msg.arbitration_id
        prio, pf, da, sa = cid >> 26 & 7, cid >> 16 & 0xFF, cid >> 8 & 0xFF, cid & 0xFF
        data = bytes(msg.data)
        if sa != CHARGER or da != BMS:
            self.violate("bad_address", f"id 0x{cid:08X}: expected SA 0x56, DA 0xF4")
            return
        spec = CHARGER_FRAMES.get(pf)
        if spec is None:
            self.violate("unknown_message", f"id 0x{cid:08X} {data.hex()}")
            return
        name = NAMES[pf]
        if prio != spec[0]:
            self.violate("bad_priority", f"{name} priority {prio}, expected {spec[0]}")
        if len(data) not in spec[1]:
            self.violate("bad_dlc", f"{name} DLC {len(data)}, expected {sorted(spec[1])}")
            return
        for i, mask in enumerate(FILL.get(pf, ())):
            if i < len(data) and data[i] & mask != mask:
                self.violate(
                    "fill_bits", f"{name} byte {i + 1} = 0x{data[i]:02X}, reserved bits not 1"
                )
                break
        self._last_rx[name] = self._now
        if self.silent and pf != CEM:
            return
        handler = getattr(self, f"_on_{name.replace('.', '_').lower()}")
        handler(data, msg)

    def _on_tp_cm(self, data: bytes, msg: can.Message) -> None:
        self._tp_cm(data)

    def _on_chm(self, data: bytes, msg: can.Message) -> None:
        if data != b"\x01\x01\x00":
            self.violate("chm_version", f"CHM {data.hex()}, expected 010100 (V1.1)")
        if self.phase is Phase.WAIT_CHM:
            self._enter(Phase.HANDSHAKE)

    def _on_crm(self, data: bytes, msg: can.Message) -> None:
        result = data[0]
        number = int.from_bytes(data[1:5], "little")
        if result not in (0x00, 0xAA):
            self.violate("crm_value", f"CRM result 0x{result:02X}")
            return
        if self.crm_number is not None and number != self.crm_number:
            self.violate("crm_number", f"charger number changed {self.crm_number} -> {number}")
        self.crm_number = number
        if result == 0x00:
            if self.phase in (Phase.WAIT_CHM, Phase.HANDSHAKE, Phase.ERROR, Phase.ENDED):
                if self.phase in (Phase.ERROR, Phase.ENDED):
                    self.note("rehandshake")
                self._reset_session()
                self._enter(Phase.RECOGNITION)
            elif self.phase in (Phase.CHARGING, Phase.READY, Phase.PARAMETERS):
                self.violate("crm_restart", f"CRM 0x00 in {self.phase.value} without CEM/BEM")
            return
        # 0xAA: only after our BRM has been received whole.
        if self._brm_done_at is None:
            self.violate("crm_aa_early", f"CRM 0xAA before BRM was complete ({self.phase.value})")
        if self.phase is Phase.RECOGNITION:
            self._crm_aa = True
            self._enter(Phase.PARAMETERS)

    def _reset_session(self) -> None:
        self._brm_done_at = self._bcp_done_at = self._bro_aa_at = None
        self._bst_at = self._cst_at = self._cml_at = None
        self._saw_cro = self._crm_aa = False
        self._last_ccs_t = None
        self._tx = None
        self._bem = None
        self._charger_stopped = False
        self._stop_from = None
        self.stop_latency_s = None
        self.contactors = False

    def _on_cts(self, data: bytes, msg: can.Message) -> None:
        if self._bcp_done_at is None:
            self.violate("cts_early", "CTS before BCP was received")

    def _on_cml(self, data: bytes, msg: can.Message) -> None:
        vmax, vmin, imax, imin = struct.unpack("<HHHH", data)
        self.cml = (vmax * 0.1, vmin * 0.1, charge_current(imax), charge_current(imin))
        if self._bcp_done_at is None:
            self.violate("cml_early", "CML before BCP was received")
            return
        if self.phase is Phase.PARAMETERS and self._cml_at is None:
            self._cml_at = self._now

    def _on_cro(self, data: bytes, msg: can.Message) -> None:
        value = data[0]
        if value not in (0x00, 0xAA):
            self.violate("cro_value", f"CRO 0x{value:02X}")
            return
        if self._bro_aa_at is None:
            self.violate("cro_early", f"CRO 0x{value:02X} before BRO 0xAA")
            return
        self._saw_cro = True
        if value == 0xAA and self.phase is Phase.READY:
            self.sessions += 1
            self._enter(Phase.CHARGING)
            self.charging.set()

    def _on_ccs(self, data: bytes, msg: can.Message) -> None:
        v, i, minutes = struct.unpack("<HHH", data[:6])
        permit = data[6] & 0x03 if len(data) >= 7 else None
        sample = CcsSample(
            msg.timestamp,
            self._now,
            v * 0.1,
            charge_current(i),
            minutes,
            permit,
            self.demand_a,
            self.delivered_a,
        )
        if self.phase is not Phase.CHARGING:
            late = self._cst_at is not None and self._now - self._cst_at > 0.2
            if self.phase is Phase.READY or late or self.phase is Phase.ERROR:
                self.violate("ccs_out_of_phase", f"CCS in {self.phase.value}: {data.hex()}")
            return
        self.ccs.append(sample)
        self._last_ccs_t = self._now
        if permit not in (None, 0, 1):
            self.violate("ccs_permit", f"CCS charging-permitted field {permit}")
        if minutes > 600:
            self.violate("ccs_minutes", f"CCS cumulative time {minutes} min > 600")
        # Over-current: more than asked (BCL) or allowed (BCP), for longer than a poll or two.
        limit = min(self.demand_a, self.cfg.max_current_a)
        over = max(sample.current_a, self.delivered_a) > limit + max(1.0, 0.01 * limit)
        if over:
            self._over_since = self._over_since or self._now
            if self._now - self._over_since > 0.5:
                self.violate(
                    "over_current",
                    f"{sample.current_a:.1f} A reported / {self.delivered_a:.1f} A delivered "
                    f"for a {limit:.1f} A limit",
                )
                self._over_since = None
        else:
            self._over_since = None

    def _on_cst(self, data: bytes, msg: can.Message) -> None:
        if data not in self.cst:
            self.cst.append(data)
            self.note("cst", data.hex())
        for byte, shift in [(0, 0), (0, 2), (0, 4), (0, 6), (1, 0), (1, 2), (1, 4), (1, 6)]:
            if data[byte] >> shift & 3 == 3:
                self.violate("cst_field", f"CST {data.hex()}: byte {byte + 1} field {shift} is 11")
                return
        if data[2] & 0x0F in (0x03, 0x0C, 0x0F) or data[3] & 0x0F in (0x03, 0x0C, 0x0F):
            self.violate("cst_field", f"CST {data.hex()}: a field is 11")
        if self.phase is Phase.STOPPING and self._bst_at is not None:
            if data[0] >> 6 & 3 != 1:
                self.violate("cst_reason", f"CST {data.hex()} after our BST lacks 'BMS stopped'")
            if self._cst_at is None:
                self._cst_at = self._now
                self.note("cst_answer", f"{self._now - self._bst_at:.3f}s")
                self._enter(Phase.STATISTICS)
            return
        if self.phase in (Phase.CHARGING, Phase.READY, Phase.PARAMETERS):
            if not any(data[:2]) and not data[2] & 0x0F and not data[3] & 0x0F:
                self.violate("cst_reason", f"CST {data.hex()} gives no reason")
            if data[0] >> 6 & 3 == 1:
                self.violate("cst_reason", f"CST {data.hex()} says 'BMS stopped' but we did not")
            self._cst_at = self._now
            self._charger_stopped = True
            self._stop_watch(self._now, 0.1)
            # Answer with BST "charger stopped", then statistics.
            self._bst_bits = b"\x40\x00\x00\xf0"
            self._send("BST", 4, BST, self._bst_bits)
            self._enter(Phase.STATISTICS)

    def _on_csd(self, data: bytes, msg: can.Message) -> None:
        minutes, energy, number = struct.unpack("<HHI", data)
        if self.phase is not Phase.STATISTICS:
            if self.phase is not Phase.ENDED:
                self.violate("csd_early", f"CSD in {self.phase.value}")
            return
        if self._last_sent.get("BSD") is None:
            self.violate("csd_early", "CSD before our BSD")
        self.csd = (minutes, energy * 0.1, number)
        if self.crm_number is not None and number != self.crm_number:
            self.violate("csd_number", f"CSD charger number {number} != CRM {self.crm_number}")
        if abs(energy * 0.1 - self.energy_kwh) > max(0.15, 0.1 * self.energy_kwh):
            self.violate(
                "csd_energy", f"CSD says {energy * 0.1:.1f} kWh, pack took {self.energy_kwh:.3f}"
            )
        self._enter(Phase.ENDED)
        self.contactors = False
        self.ended.set()

    def _on_cem(self, data: bytes, msg: can.Message) -> None:
        codes = [
            spn for spn, (byte, mask, _, _) in CEM_BITS.items() if data[byte] & mask == mask & 0x55
        ]
        if not codes:
            self.violate("cem_empty", f"CEM {data.hex()} names no timeout")
        if codes and (not self.cem_codes or self._cem_active != hash(data)):
            self.cem_codes.extend(codes)
            self.note("cem", f"{data.hex()} {codes}")
        self._cem_active = hash(data)
        for spn in codes:
            _, _, what, limit = CEM_BITS[spn]
            last = self._last_sent.get(what)
            if not self.silent and last is not None and self._now - last < 0.8 * limit:
                self.violate(
                    "cem_unjustified",
                    f"CEM SPN{spn} ({what}) but we sent it {self._now - last:.2f} s ago",
                )
        if self.phase in (Phase.CHARGING, Phase.STOPPING, Phase.STATISTICS):
            self._stop_watch(self._now, 0.1)
        if self.phase is not Phase.ERROR:
            self._bem = None
            self._enter(Phase.ERROR)


async def wait_until(cond: object, timeout_s: float, step_s: float = 0.02) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(step_s)


def ccs_period_stats(samples: list[CcsSample]) -> tuple[float, float, int]:
    """Median and max gap (s) between CCS frames by the sender's timestamps, and the count."""
    gaps = sorted(b.t_wall - a.t_wall for a, b in zip(samples, samples[1:], strict=False))
    if not gaps:
        return 0.0, 0.0, 0
    return gaps[len(gaps) // 2], gaps[-1], len(gaps)


__all__ = [
    "BmsPeerConfig",
    "CcsSample",
    "GbtBmsPeer",
    "Phase",
    "Violation",
    "ccs_period_stats",
    "wait_until",
]
