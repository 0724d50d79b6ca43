"""Point codec: registers <-> engineering values, per the map. Pure, no I/O.

Values are `float | int | bool | str | tuple[str, ...]`: numbers (scaled), booleans, enum state
names, the names of the set bits of a bitfield, and the active faults of a fault-code register.
A `mask` picks a field out of the register before anything else. A raw value the map lists as invalid, a
NaN/inf float, or an enum raw value the map does not name decodes as invalid.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.modbus.errors import WriteRangeError
from drivers.modbus.regmap import PointSpec, WordOrder

Value = float | int | bool | str | tuple[str, ...]

_SIGNED = {"i16": 16, "i32": 32}


def combine(words: Sequence[int], order: WordOrder) -> int:
    """Unsigned integer of 1 or 2 registers; `order` says which register holds the high word."""
    if len(words) == 1:
        return words[0] & 0xFFFF
    hi, lo = (words[0], words[1]) if order == "big" else (words[1], words[0])
    return ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)


def split(raw: int, words: int, order: WordOrder) -> list[int]:
    if words == 1:
        return [raw & 0xFFFF]
    hi, lo = (raw >> 16) & 0xFFFF, raw & 0xFFFF
    return [hi, lo] if order == "big" else [lo, hi]


def _is_invalid_raw(p: PointSpec, raw: int) -> bool:
    if not p.invalid:
        return False
    mask = (1 << p.raw_bits) - 1
    return any((v & mask) == raw for v in p.invalid)


def _eng(p: PointSpec, x: float | int) -> float | int:
    if p.scale == 1.0 and p.offset == 0.0 and isinstance(x, int):
        return x
    # round away binary noise (0.1 * 3 = 0.30000000000000004) without losing real digits
    return round(x * p.scale + p.offset, 9)


def decode_words(p: PointSpec, order: WordOrder, words: Sequence[int]) -> tuple[Value, bool]:
    """(value, valid) of a register point from exactly `p.words` registers."""
    if len(words) != p.words:
        raise ValueError(f"{len(words)} registers for a {p.words}-register point")
    raw = combine(words, order)
    if p.mask is not None:
        raw = (raw & p.mask) >> p.bit_shift  # a field packed in the register
    if _is_invalid_raw(p, raw):
        return raw, False
    t = p.type
    if p.fault_codes is not None:
        if raw in p.no_fault:
            return (), True
        # an unknown code is still a fault: never read it as "no fault"
        return (p.fault_codes.get(raw, f"code_{raw}"),), True
    if t == "bool":
        return raw != 0, True
    if t == "f32":
        f = struct.unpack(">f", raw.to_bytes(4, "big"))[0]
        if not math.isfinite(f):
            return raw, False
        # a float32 carries ~7 significant digits; drop the binary tail (349.01000977 -> 349.01)
        return _eng(p, float(f"{f:.7g}")), True
    if t == "bitfield":
        names = p.bits or {}
        return tuple(names.get(i, f"bit{i}") for i in range(p.raw_bits) if raw >> i & 1), True
    n = _SIGNED.get(t) if p.mask is None else None
    value = raw - (1 << n) if n is not None and raw >> (n - 1) & 1 else raw
    if p.enum is not None:
        name = p.enum.get(value)
        if name is None:
            return value, False
        return name, True
    return _eng(p, value), True


def decode_bit(p: PointSpec, bit: bool) -> tuple[Value, bool]:
    return bool(bit), True


def _check_limits(p: PointSpec, name: str, value: float) -> None:
    if p.min is not None and value < p.min:
        raise WriteRangeError(f"{name}: {value} below the map minimum {p.min}")
    if p.max is not None and value > p.max:
        raise WriteRangeError(f"{name}: {value} above the map maximum {p.max}")


def encode(p: PointSpec, order: WordOrder, name: str, value: Value) -> list[int] | bool:
    """Registers (or one bit) for `value`. Raises WriteRangeError when it cannot be represented."""
    if p.is_bit or p.type == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value) if p.is_bit else [int(bool(value))]
        raise WriteRangeError(f"{name}: expects a bool, got {value!r}")
    if p.type == "bitfield":
        if isinstance(value, tuple):
            inverse = {v: k for k, v in (p.bits or {}).items()}
            raw = 0
            for flag in value:
                if flag not in inverse:
                    raise WriteRangeError(f"{name}: unknown flag {flag!r}")
                raw |= 1 << inverse[flag]
        elif isinstance(value, int) and not isinstance(value, bool):
            raw = value
            if not 0 <= raw < 1 << p.raw_bits:
                raise WriteRangeError(f"{name}: {raw} outside the {p.raw_bits}-bit range")
        else:
            raise WriteRangeError(f"{name}: expects flag names or an int, got {value!r}")
        return split(raw, p.words, order)
    if isinstance(value, str):
        if p.enum is None:
            raise WriteRangeError(f"{name}: expects a number, got {value!r}")
        inverse_enum = {v: k for k, v in p.enum.items()}
        if value not in inverse_enum:
            raise WriteRangeError(f"{name}: unknown state {value!r}")
        number: float = inverse_enum[value]
        eng_check = False
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRangeError(f"{name}: expects a number, got {value!r}")
    else:
        number = value
        eng_check = True
    if not math.isfinite(number):
        raise WriteRangeError(f"{name}: {number} is not finite")
    if eng_check:
        _check_limits(p, name, number)
        number = (number - p.offset) / p.scale
    if p.type == "f32":
        try:
            packed = struct.pack(">f", number)
        except OverflowError:
            raise WriteRangeError(f"{name}: {value} does not fit a 32-bit float") from None
        return split(int.from_bytes(packed, "big"), 2, order)
    raw = round(number)
    bits = p.raw_bits
    lo, hi = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.type in _SIGNED else (0, (1 << bits) - 1)
    )
    if not lo <= raw <= hi:
        raise WriteRangeError(f"{name}: {value} -> raw {raw} outside the {p.type} range {lo}..{hi}")
    if _is_invalid_raw(p, raw & ((1 << bits) - 1)):
        raise WriteRangeError(f"{name}: {value} encodes to a raw value the map marks invalid")
    return split(raw & ((1 << bits) - 1), p.words, order)
