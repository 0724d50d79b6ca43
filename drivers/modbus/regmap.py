"""Register maps as data: canonical point names -> where and how they live on a device.

A map file (`drivers/modbus/maps/*.yaml`, or a station's own) is validated in two passes: pydantic for shapes and
types, then cross-checks (overlaps, ranges, barriers, read-only tables) placed at the file line
of the offending key. Every error reads `FILE:LINE: dotted.field.path: message`.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from drivers.core.datafile import (
    DataFileError,
    FileRef,
    PathKey,
    Problem,
    as_traversable,
    problem_at,
    problems_from_validation,
    read_yaml,
)
from drivers.modbus.errors import PointError

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal["u16", "i16", "u32", "i32", "f32", "bool", "bitfield"]
WordOrder = Literal["big", "little"]
Access = Literal["r", "rw", "w"]

REGISTER_TABLES: frozenset[str] = frozenset({"holding", "input"})
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
READ_ONLY_TABLES: frozenset[str] = frozenset({"input", "discrete"})
INTEGER_TYPES: frozenset[str] = frozenset({"u16", "i16", "u32", "i32"})
MAX_ADDRESS = 65535

_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Readback(_Strict):
    """Where a device echoes the value it accepted for a write-only point (same type, scale and
    word order as the point)."""

    table: Table
    address: int = Field(ge=0, le=MAX_ADDRESS)


class PointSpec(_Strict):
    """One named value on the device."""

    table: Table
    address: int = Field(ge=0, le=MAX_ADDRESS)
    type: PointType
    # For 32-bit types: "big" = high word at the lower address (ABCD), "little" = low word first
    # (CDAB). None = the map's default.
    word_order: WordOrder | None = None
    width: Literal[16, 32] = 16  # bitfield only: 16 or 32 bits (1 or 2 registers)
    scale: float = 1.0  # engineering = raw * scale + offset
    offset: float = 0.0
    unit: str = ""
    invalid: list[int] = Field(default_factory=list)  # raw values meaning "no value"
    access: Access = "r"  # "w": write-only, never polled (the device may refuse reads)
    readback: Readback | None = None  # w points: where the accepted value is echoed
    # Integer fields packed in a register: value = (raw & mask) >> shift (shift defaults to the
    # mask's lowest set bit). Points may share a register when their masks do not overlap.
    mask: int | None = Field(default=None, ge=1)
    shift: int | None = Field(default=None, ge=0, le=31)
    # A fault-code register: raw code -> canonical fault name; the value is the tuple of active
    # faults (empty for a code in `no_fault`; an unlisted code reads as ("code_<n>",)).
    fault_codes: dict[int, str] | None = None
    no_fault: list[int] = Field(default_factory=lambda: [0])
    group: str = "fast"
    min: float | None = None  # engineering limits a write must respect
    max: float | None = None
    enum: dict[int, str] | None = None  # raw -> canonical state name
    bits: dict[int, str] | None = None  # bit index -> canonical flag name
    description: str = ""

    @field_validator("scale")
    @classmethod
    def _scale_nonzero(cls, v: float) -> float:
        if v == 0 or not math.isfinite(v):
            raise ValueError("scale must be a finite non-zero number")
        return v

    @property
    def bit_shift(self) -> int:
        if self.shift is not None:
            return self.shift
        if self.mask is None:
            return 0
        return (self.mask & -self.mask).bit_length() - 1

    @property
    def polled(self) -> bool:
        """Read by the poll cycle (write-only points never are)."""
        return self.access != "w"

    @property
    def writable(self) -> bool:
        return self.access in ("rw", "w")

    @property
    def words(self) -> int:
        """Registers this point spans (1 for a coil or discrete bit)."""
        if self.type in ("u32", "i32", "f32"):
            return 2
        if self.type == "bitfield":
            return self.width // 16
        return 1

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def raw_bits(self) -> int:
        return 16 * self.words


class Barrier(_Strict):
    """Reads never span this address: a block holds addresses < `address` or >= it, not both."""

    table: Table
    address: int = Field(ge=1, le=MAX_ADDRESS)
    reason: str = ""


class PollGroup(_Strict):
    period_s: float = Field(gt=0, le=3600)


class WatchdogSpec(_Strict):
    """A heartbeat register the controller must keep changing; the device stops its output when
    it does not change within `timeout_s` (the device's own setting, used by simulators)."""

    point: str
    period_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)


def _default_groups() -> dict[str, PollGroup]:
    return {"fast": PollGroup(period_s=0.1), "slow": PollGroup(period_s=10.0)}


class RegisterMap(_Strict):
    name: str
    description: str = ""
    device: str = ""  # kind of device (charger, plc): documentation only
    word_order: WordOrder = "big"
    poll_groups: dict[str, PollGroup] = Field(default_factory=_default_groups)
    barriers: list[Barrier] = Field(default_factory=list)
    watchdog: WatchdogSpec | None = None
    # Values the device does not publish (e.g. its voltage and power ratings): canonical name ->
    # constant, served in every snapshot as a good value.
    constants: dict[str, float] = Field(default_factory=dict)
    points: dict[str, PointSpec] = Field(min_length=1)

    def point(self, name: str) -> PointSpec:
        try:
            return self.points[name]
        except KeyError:
            raise PointError(f"map {self.name!r} has no point {name!r}") from None

    def word_order_of(self, p: PointSpec) -> WordOrder:
        return p.word_order or self.word_order


def cross_check(m: RegisterMap, file: FileRef, index: dict[PathKey, int]) -> list[Problem]:
    """Checks that need the whole map; each problem is placed at its key's line."""
    out: list[Problem] = []

    def bad(loc: PathKey, msg: str) -> None:
        out.append(problem_at(file, index, loc, msg))

    spans: dict[str, list[tuple[int, int, str]]] = {
        t: [] for t in ("holding", "input", "coil", "discrete")
    }
    for name, p in m.points.items():
        loc: PathKey = ("points", name)
        if not re.match(_NAME_PATTERN, name):
            bad(
                loc,
                "point names are canonical lower_snake_case names with units (output_voltage_v)",
            )
        if p.is_bit and p.type != "bool":
            bad((*loc, "type"), f"a {p.table} point holds one bit: type must be bool, not {p.type}")
        if p.writable and p.table in READ_ONLY_TABLES:
            bad(
                (*loc, "access"), f"{p.access} on read-only table {p.table!r} (use holding or coil)"
            )
        if p.readback is not None:
            if p.access != "w":
                bad((*loc, "readback"), "readback applies to write-only (access: w) points")
            elif p.readback.table in BIT_TABLES and not p.is_bit:
                bad(
                    (*loc, "readback", "table"), "a register point reads back from a register table"
                )
            elif p.readback.table == p.table and p.readback.address == p.address:
                bad((*loc, "readback", "address"), "the read-back address is the point itself")
            elif p.readback.address + p.words - 1 > MAX_ADDRESS:
                bad((*loc, "readback", "address"), f"read-back spans beyond {MAX_ADDRESS}")
        if p.mask is not None or p.shift is not None:
            if p.type not in INTEGER_TYPES:
                bad((*loc, "mask"), f"mask/shift need an integer type, not {p.type}")
            elif p.mask is None:
                bad((*loc, "shift"), "shift needs a mask")
            elif p.mask >= 1 << p.raw_bits:
                bad((*loc, "mask"), f"mask {p.mask:#x} wider than {p.raw_bits} bits")
            if p.writable:
                bad(
                    (*loc, "access"), "a masked field is read-only (a write would clobber the rest)"
                )
        if p.fault_codes is not None and p.type not in INTEGER_TYPES:
            bad((*loc, "fault_codes"), f"fault_codes need an integer type, not {p.type}")
        if p.fault_codes is not None and p.enum is not None:
            bad((*loc, "fault_codes"), "a point has enum or fault_codes, not both")
        if p.width != 16 and p.type != "bitfield":
            bad((*loc, "width"), "width applies to bitfield points only")
        if p.enum is not None and p.type not in INTEGER_TYPES:
            bad((*loc, "enum"), f"enum needs an integer type, not {p.type}")
        if p.bits is not None:
            if p.type != "bitfield":
                bad((*loc, "bits"), "bits applies to bitfield points only")
            for bit in p.bits:
                if not 0 <= bit < p.raw_bits:
                    bad((*loc, "bits", bit), f"bit {bit} outside 0..{p.raw_bits - 1}")
        if p.word_order is not None and p.words != 2:
            bad((*loc, "word_order"), "word_order applies to 32-bit points only")
        if p.group not in m.poll_groups:
            known = ", ".join(sorted(m.poll_groups))
            bad((*loc, "group"), f"unknown poll group {p.group!r} (known: {known})")
        end = p.address + p.words - 1
        if end > MAX_ADDRESS:
            bad((*loc, "address"), f"point spans {p.address}..{end}, beyond {MAX_ADDRESS}")
        hi = (1 << p.raw_bits) - 1
        for i, raw in enumerate(p.invalid):
            if p.is_bit or not (-(1 << (p.raw_bits - 1)) <= raw <= hi):
                bad((*loc, "invalid", i), f"invalid raw value {raw} outside the {p.type} range")
        if p.min is not None and p.max is not None and p.min > p.max:
            bad((*loc, "min"), f"min {p.min} > max {p.max}")
        if (p.min is not None or p.max is not None) and not p.writable:
            bad(
                (*loc, "min" if p.min is not None else "max"),
                "min/max apply to writable points only",
            )
        for b_i, b in enumerate(m.barriers):
            if b.table == p.table and p.address < b.address <= end:
                bad((*loc, "address"), f"point straddles barrier {b_i} at {b.table} {b.address}")
        spans[p.table].append((p.address, end, name))
    for table, items in spans.items():
        items.sort()
        for i, (s1, _e1, n1) in enumerate(items):
            for s0, e0, n0 in items[:i]:
                if s1 <= e0 and not _disjoint_fields(m.points[n0], m.points[n1]):
                    bad(("points", n1, "address"), f"overlaps point {n0!r} ({table} {s0}..{e0})")
                    break
    for cname in m.constants:
        if cname in m.points:
            bad(("constants", cname), f"{cname!r} is also a point: a value comes from one place")
        elif not re.match(_NAME_PATTERN, cname):
            bad(("constants", cname), "constant names are canonical lower_snake_case names")
    if m.watchdog is not None:
        wp = m.points.get(m.watchdog.point)
        if wp is None:
            bad(("watchdog", "point"), f"no point {m.watchdog.point!r} in points")
        elif not wp.writable or wp.type not in INTEGER_TYPES:
            bad(("watchdog", "point"), "the watchdog point must be a writable integer register")
    if m.device == "charger":
        for loc, msg in charger_problems(m):
            bad(loc, msg)
    return out


# What the station needs of a charger map (docs/modbus.md "Canonical charger points").
CHARGER_STATUS = ("output_voltage_v", "output_current_a", "state")
CHARGER_RATINGS = ("max_voltage_v", "max_current_a", "max_power_kw")
CHARGER_LIMITS = ("current_limit_a", "power_limit_kw")


def charger_problems(m: RegisterMap) -> list[tuple[PathKey, str]]:
    """(location, message) for each point the station needs to run a charger and to switch it
    off that the map lacks. Empty for a usable charger map."""
    out: list[tuple[PathKey, str]] = []
    where: PathKey = ("points",)
    for name in CHARGER_STATUS:
        p = m.points.get(name)
        if p is None or not p.polled:
            out.append((where, f"a charger map needs a readable {name!r} point"))
    for name in CHARGER_RATINGS:
        p = m.points.get(name)
        if name not in m.constants and (p is None or not p.polled):
            out.append(
                (where, f"a charger map needs {name!r}: a readable point or a constants entry")
            )
    limits = [n for n in CHARGER_LIMITS if n in m.points]
    if not limits:
        out.append(
            (where, "a charger map needs a writable 'current_limit_a' (or 'power_limit_kw')")
        )
    for name in (*limits, "voltage_setpoint_v", "enable"):
        p = m.points.get(name)
        if p is not None and not p.writable:
            out.append((("points", name, "access"), f"{name!r} must be writable (rw or w)"))
    enable = m.points.get("enable")
    if enable is not None and enable.type != "bool":
        out.append((("points", "enable", "type"), "'enable' must be a bool"))
    if limits and enable is None:
        # No enable point: the output is switched off by writing a limit of 0.
        lim = m.points[limits[0]]
        if (lim.min is not None and lim.min > 0) or (0 in lim.invalid):
            out.append(
                (
                    ("points", limits[0]),
                    f"no 'enable' point, so {limits[0]!r} must accept 0 to switch the output off",
                )
            )
    return out


def _disjoint_fields(a: PointSpec, b: PointSpec) -> bool:
    """Two points on the same registers that read different bits of them (masks)."""
    return (
        a.mask is not None
        and b.mask is not None
        and (a.address, a.words) == (b.address, b.words)
        and a.mask & b.mask == 0
    )


def _load(path: FileRef) -> tuple[RegisterMap | None, list[Problem]]:
    try:
        data, index = read_yaml(path)
    except DataFileError as e:
        return None, e.problems
    try:
        m = RegisterMap.model_validate(data if data is not None else {})
    except ValidationError as e:
        return None, problems_from_validation(e, str(path), index)
    return m, cross_check(m, path, index)


def validate_map_file(path: FileRef) -> list[Problem]:
    """Every problem of a map file (empty when valid). For `swapd check-config`."""
    return _load(as_traversable(path))[1]


def load_register_map(path: FileRef) -> RegisterMap:
    """Load and validate a map file (a path or a shipped file). Raises DataFileError listing
    every problem."""
    m, problems = _load(as_traversable(path))
    if problems or m is None:
        raise DataFileError(problems)
    return m
