"""GB/T 27930-2015 codec: CAN frames <-> signal dicts, driven by drivers/can/gbt27930.dbc (cantools).

The DBC is the data; this module adds what a DBC cannot say: the fill-with-1 rule for unused
bits (an OR mask computed from the signal layout), lenient lengths (CCS with DLC 6/7, BRM with
41 bytes), ASCII fields (BRM manufacturer and VIN) and the variable-length BMV/BMT/BSP.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import cantools

# Package data: shipped in the wheel beside this module.
DBC_PATH = files("drivers.can") / "gbt27930.dbc"

CHARGER_ADDR = 0x56
BMS_ADDR = 0xF4

PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
PGN_BMV = 0x1500
PGN_BMT = 0x1600
PGN_BSP = 0x1700
VARIABLE_PGNS = {PGN_BMV: "BMV", PGN_BMT: "BMT", PGN_BSP: "BSP"}

SignalValue = int | float
Signals = dict[str, SignalValue]

# Shortest payload we still decode (missing trailing signals are left out). Real chargers send
# CCS with 7 bytes, 2011 ones with 6; the 2015 BRM table says 41 where real packs send 49.
_MIN_LENGTH = {"CCS": 6, "BRM": 41}

VIN_SLICE = slice(24, 41)
MANUFACTURER_SLICE = slice(8, 12)


class CodecError(ValueError):
    """A frame or payload that cannot be decoded (counted and dropped by the caller)."""


class UnknownFrameError(CodecError):
    """An id that is not GB/T 27930 traffic (e.g. other ECUs on the bus)."""


class MalformedFrameError(CodecError):
    """A GB/T 27930 id with a payload that does not fit its message (wrong DLC, bad TP...)."""


@dataclass(frozen=True, slots=True)
class CanFrame:
    """An extended (29-bit) classic CAN frame; `data` length is the DLC."""

    arbitration_id: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.arbitration_id:08X}#{self.data.hex().upper()}"


@dataclass(frozen=True, slots=True)
class Decoded:
    name: str
    signals: Signals
    raw: bytes


def can_id(priority: int, pf: int, dest: int, source: int) -> int:
    """PDU1 id: P<<26 | PF<<16 | DA<<8 | SA (R = DP = 0)."""
    return (priority << 26) | (pf << 16) | (dest << 8) | source


def id_fields(arbitration_id: int) -> tuple[int, int, int, int]:
    """(priority, pf, dest, source) of a 29-bit id."""
    return (
        (arbitration_id >> 26) & 0x7,
        (arbitration_id >> 16) & 0xFF,
        (arbitration_id >> 8) & 0xFF,
        arbitration_id & 0xFF,
    )


def pgn_of(arbitration_id: int) -> int:
    return ((arbitration_id >> 16) & 0xFF) << 8


def bcd_byte(value: int) -> int:
    return ((value // 10) % 10) << 4 | (value % 10)


def from_bcd(raw: int) -> int:
    """Lenient packed BCD (nibbles > 9 are taken at face value, as seen in real chargers)."""
    return (raw >> 4) * 10 + (raw & 0xF)


def cts_signals(ts: datetime) -> Signals:
    """CTS fields for a wall-clock time: packed BCD, year as `YY CC` (2024 -> 24 20)."""
    return {
        "CTS_Second": bcd_byte(ts.second),
        "CTS_Minute": bcd_byte(ts.minute),
        "CTS_Hour": bcd_byte(ts.hour),
        "CTS_Day": bcd_byte(ts.day),
        "CTS_Month": bcd_byte(ts.month),
        "CTS_Year": bcd_byte(ts.year % 100) | bcd_byte(ts.year // 100) << 8,
    }


def ascii_field(raw: bytes) -> str:
    """ASCII text with 0xFF/0x00 fill removed; non-printable bytes make it empty (not sent)."""
    text = raw.rstrip(b"\xff\x00")
    if not text or any(b < 0x20 or b > 0x7E for b in text):
        return ""
    return text.decode("ascii")


@dataclass(frozen=True, slots=True)
class _MessageInfo:
    name: str
    frame_id: int
    length: int
    min_length: int
    fill: bytes
    all_ones: Signals
    message: Any  # cantools Message (untyped library)


class GbtCodec:
    """Encode/decode GB/T 27930 messages. Decoding is lenient, encoding is strict to the standard."""

    def __init__(self, path: Traversable = DBC_PATH) -> None:
        db: Any = cantools.database.load_string(
            path.read_text(encoding="utf-8"), database_format="dbc", strict=True
        )
        self.db = db
        self._by_id: dict[int, _MessageInfo] = {}
        self._by_name: dict[str, _MessageInfo] = {}
        self._by_pgn: dict[int, _MessageInfo] = {}
        for m in db.messages:
            info = _MessageInfo(
                name=m.name,
                frame_id=m.frame_id,
                length=m.length,
                min_length=_MIN_LENGTH.get(m.name, m.length),
                fill=_fill_mask(m),
                all_ones={s.name: (2**s.length - 1) * s.scale + s.offset for s in m.signals},
                message=m,
            )
            self._by_id[m.frame_id] = info
            self._by_name[m.name] = info
            self._by_pgn[pgn_of(m.frame_id)] = info

    # -- lookup -------------------------------------------------------------------------------

    def name_of(self, arbitration_id: int) -> str:
        info = self._by_id.get(arbitration_id)
        if info is None:
            raise UnknownFrameError(f"unknown id {arbitration_id:08X}")
        return info.name

    def frame_id(self, name: str) -> int:
        return self._by_name[name].frame_id

    def length(self, name: str) -> int:
        return self._by_name[name].length

    def fill_mask(self, name: str) -> bytes:
        return self._by_name[name].fill

    def pgn(self, name: str) -> int:
        return pgn_of(self._by_name[name].frame_id)

    def is_known_id(self, arbitration_id: int) -> bool:
        return arbitration_id in self._by_id

    # -- decode -------------------------------------------------------------------------------

    def decode_frame(self, frame: CanFrame) -> Decoded:
        """Decode a single-frame message. Raises UnknownFrameError / MalformedFrameError."""
        info = self._by_id.get(frame.arbitration_id)
        if info is None:
            raise UnknownFrameError(f"unknown id {frame.arbitration_id:08X}")
        return self._decode(info, frame.data)

    def decode_payload(self, pgn: int, payload: bytes) -> Decoded:
        """Decode a TP-reassembled payload by PGN (BRM, BCP, BCS; any fixed-layout message)."""
        info = self._by_pgn.get(pgn)
        if info is None:
            raise UnknownFrameError(f"no fixed layout for PGN {pgn:#06x}")
        return self._decode(info, payload)

    def _decode(self, info: _MessageInfo, data: bytes) -> Decoded:
        if len(data) < info.min_length:
            raise MalformedFrameError(
                f"{info.name}: {len(data)} bytes, at least {info.min_length} expected"
            )
        try:
            signals = info.message.decode(
                data, decode_choices=False, allow_truncated=True, allow_excess=True
            )
        except Exception as exc:  # cantools raises several types; all mean "bad payload"
            raise MalformedFrameError(f"{info.name}: {exc}") from exc
        return Decoded(info.name, signals, bytes(data))

    # -- encode -------------------------------------------------------------------------------

    def encode(self, name: str, signals: Signals | None = None, length: int | None = None) -> bytes:
        """Encode; missing signals are sent as all-ones ("not available"), unused bits as 1."""
        info = self._by_name[name]
        values = dict(info.all_ones)
        if signals:
            unknown = set(signals) - set(values)
            if unknown:
                raise KeyError(f"{name}: unknown signals {sorted(unknown)}")
            values.update(signals)
        raw = bytearray(info.message.encode(values, strict=False))
        for i, m in enumerate(info.fill):
            raw[i] |= m
        n = info.length if length is None else length
        return bytes(raw[:n])

    def frame(self, name: str, signals: Signals | None = None) -> CanFrame:
        return CanFrame(self._by_name[name].frame_id, self.encode(name, signals))


def _fill_mask(message: Any) -> bytes:
    """1 for every bit no signal covers (Intel layout: bit n is byte n//8, bit n%8)."""
    used = 0
    for s in message.signals:
        used |= ((1 << s.length) - 1) << s.start
    total = message.length * 8
    unused: int = ((1 << total) - 1) & ~used
    return unused.to_bytes(total // 8, "little")


# -- BRM extras ---------------------------------------------------------------------------------


def brm_text_fields(payload: bytes) -> tuple[str, str]:
    """(manufacturer, vin) as text; empty when not sent."""
    return ascii_field(payload[MANUFACTURER_SLICE]), ascii_field(payload[VIN_SLICE])


def brm_put_text(payload: bytes, manufacturer: str = "", vin: str = "") -> bytes:
    out = bytearray(payload)
    if manufacturer:
        out[MANUFACTURER_SLICE] = manufacturer.encode("ascii")[:4].ljust(4, b"\xff")
    if vin:
        out[VIN_SLICE] = vin.encode("ascii")[:17].ljust(17, b"\xff")
    return bytes(out)


# -- variable-length optional messages ----------------------------------------------------------


def decode_bmv(payload: bytes) -> list[tuple[float, int]]:
    """BMV: per cell (voltage_v, group); 12 bits at 0.01 V + 4-bit group (raw, 0 offset)."""
    if len(payload) % 2:
        raise MalformedFrameError(f"BMV: odd length {len(payload)}")
    out = []
    for i in range(0, len(payload), 2):
        word = payload[i] | payload[i + 1] << 8
        out.append((round((word & 0xFFF) * 0.01, 2), word >> 12))
    return out


def encode_bmv(cells: list[tuple[float, int]]) -> bytes:
    out = bytearray()
    for voltage_v, group in cells:
        word = (round(voltage_v / 0.01) & 0xFFF) | (group & 0xF) << 12
        out += word.to_bytes(2, "little")
    return bytes(out)


def decode_bmt(payload: bytes) -> list[int]:
    """BMT: one byte per probe, 1 degC/bit, -50 offset; 0xFF = probe not sent."""
    return [b - 50 for b in payload if b != 0xFF]


def encode_bmt(temperatures_c: list[int]) -> bytes:
    return bytes(max(0, min(250, t + 50)) for t in temperatures_c)


@cache
def default_codec() -> GbtCodec:
    """The project's codec (DBC parsed once per process)."""
    return GbtCodec()
