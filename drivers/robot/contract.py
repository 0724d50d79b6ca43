"""The robot PLC register contract (drivers/robot/robot-plc.yaml) as typed codec.

Pure: registers <-> typed commands and status. Both the station's client and the simulated PLC
use it, so they cannot disagree about an address.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from importlib.resources import files

from drivers.core.datafile import (
    DataFileError,
    FileRef,
    PathKey,
    Problem,
    problem_at,
    read_yaml,
)
from drivers.modbus.regmap import RegisterMap, load_register_map

UNITS: tuple[str, str] = ("vehicle", "rack")
# Package data: the shipped contract, `builtin:robot-plc` in a station config.
DEFAULT_CONTRACT = files("drivers.robot") / "robot-plc.yaml"


class UnitState(IntEnum):
    IDLE = 0  # no command since power-up or halt cleared
    BUSY = 1  # executing the command with seq == ack_seq
    DONE = 2  # the command with seq == ack_seq finished
    FAULT = 3  # the command with seq == ack_seq failed (fault_code says why)
    HALTED = 4  # reserved: halt is reported in the `halted` bits, a halted step as FAULT


INPUT_NAMES: tuple[str, ...] = (
    "estop_chain_healthy",
    "doors_closed",
    "light_curtain_clear",
    "vehicle_present",
    "vehicle_hv_off",
    "vehicle_immobilised",
)


_UNIT_POINTS = (
    "cmd_step",
    "cmd_arg",
    "cmd_seq",
    "ack_seq",
    "state",
    "step",
    "fault_code",
    "position_mm",
)


def robot_map_problems(m: RegisterMap, path: FileRef, index: dict[PathKey, int]) -> list[Problem]:
    """What the robot contract needs of a map beyond the shared format; each problem placed at
    its key's line."""
    out: list[Problem] = []
    pts = m.points

    def bad(loc: PathKey, msg: str) -> None:
        out.append(problem_at(path, index, loc, msg))

    for need in ("halt", "inputs", "halted", "lock_engaged", "lock_torque_ok", "lock_head_count"):
        if need not in pts:
            bad(("points",), f"point {need!r} missing")
    if "inputs" in pts:
        names = set((pts["inputs"].bits or {}).values())
        for n in INPUT_NAMES:
            if n not in names:
                bad(("points", "inputs", "bits"), f"bit {n!r} missing")
    for p in ("halt", "halted"):
        if p in pts and set((pts[p].bits or {}).values()) != set(UNITS):
            bad(("points", p, "bits"), "must name vehicle and rack")
    for u in UNITS:
        missing = [f"{u}_{x}" for x in _UNIT_POINTS if f"{u}_{x}" not in pts]
        if missing:
            bad(("points",), f"points missing: {', '.join(missing)}")
            continue
        cmd = [pts[f"{u}_{x}"] for x in ("cmd_step", "cmd_arg", "cmd_seq")]
        if any(c.table != "holding" or c.access != "rw" or c.type != "u16" for c in cmd):
            bad(("points", f"{u}_cmd_step"), "command points must be rw u16 holding registers")
        a0 = cmd[0].address
        if [c.address for c in cmd] != [a0, a0 + 1, a0 + 2]:
            bad(
                ("points", f"{u}_cmd_seq", "address"),
                f"{u}_cmd_step, _arg, _seq must be contiguous (one write)",
            )
        if not pts[f"{u}_cmd_step"].enum:
            bad(("points", f"{u}_cmd_step", "enum"), "the unit's step codes are needed")
        for x in ("ack_seq", "state", "step", "fault_code", "position_mm"):
            if pts[f"{u}_{x}"].table != "input":
                bad(("points", f"{u}_{x}", "table"), "must be an input register")
    st = pts.get("vehicle_state")
    want = {s.value: s.name.lower() for s in UnitState}
    if st is not None and (st.enum or {}) != want:
        bad(
            ("points", "vehicle_state", "enum"), "must be 0 idle, 1 busy, 2 done, 3 fault, 4 halted"
        )
    if "vehicle_fault_code" in pts and not pts["vehicle_fault_code"].enum:
        bad(("points", "vehicle_fault_code", "enum"), "fault names are needed")
    return out


@dataclass(frozen=True, slots=True)
class UnitStatus:
    ack_seq: int
    state: UnitState
    step_code: int
    fault_code: int
    position_mm: int


@dataclass(frozen=True, slots=True)
class RobotStatus:
    """One consistent snapshot of the PLC's status registers (one read)."""

    units: dict[str, UnitStatus]
    inputs: dict[str, bool]
    lock_engaged: int
    lock_torque_ok: int
    lock_head_count: int
    halted: frozenset[str]
    heartbeat: int


@dataclass(frozen=True, slots=True)
class CommandEcho:
    """What the command registers of a unit hold now (read back after a restart)."""

    step_code: int
    arg: int
    seq: int


class RobotContract:
    """Addresses and codecs derived from the contract file."""

    def __init__(self, model: RegisterMap) -> None:
        self.model = model
        self._points = dict(model.points)
        inp = [p.address for p in model.points.values() if p.table == "input"]
        hold = [p.address for p in model.points.values() if p.table == "holding"]
        self.status_start = min(inp)
        self.status_count = max(inp) - self.status_start + 1
        self.command_start = min(hold)
        self.command_count = max(hold) - self.command_start + 1
        self.halt_address = self._points["halt"].address
        self.halt_bits: dict[str, int] = {
            n: b for b, n in (self._points["halt"].bits or {}).items()
        }
        self.steps: dict[str, dict[str, int]] = {
            u: {n: c for c, n in (self._points[f"{u}_cmd_step"].enum or {}).items() if c != 0}
            for u in UNITS
        }
        self.step_names: dict[str, dict[int, str]] = {
            u: {c: n for n, c in s.items()} for u, s in self.steps.items()
        }
        self.fault_names: dict[int, str] = dict(self._points["vehicle_fault_code"].enum or {})
        self.fault_codes: dict[str, int] = {n: c for c, n in self.fault_names.items()}

    @classmethod
    def load(cls, path: FileRef = DEFAULT_CONTRACT) -> RobotContract:
        """The shared map loader (drivers.modbus.regmap), then the robot's own checks.
        Raises DataFileError (`FILE:LINE: dotted.field: message`)."""
        m = load_register_map(path)
        _, index = read_yaml(path)
        problems = robot_map_problems(m, path, index)
        if problems:
            raise DataFileError(problems)
        return cls(m)

    def address(self, point: str) -> int:
        return self._points[point].address

    def bits(self, point: str) -> dict[str, int]:
        """Flag name -> bit index."""
        return {n: b for b, n in (self._points[point].bits or {}).items()}

    def command_address(self, unit: str) -> int:
        return self._points[f"{unit}_cmd_step"].address

    def step_code(self, unit: str, name: str) -> int:
        return self.steps[unit][name]

    def step_name(self, unit: str, code: int) -> str:
        return self.step_names[unit].get(code, f"code_{code}")

    def fault_name(self, code: int) -> str:
        return self.fault_names.get(code, f"fault_{code}")

    def halt_value(self, units: frozenset[str]) -> int:
        v = 0
        for u in units:
            v |= 1 << self.halt_bits[u]
        return v

    def decode_status(self, regs: list[int]) -> RobotStatus:
        """Decode the status span read from `status_start`. Raises ValueError on short data or
        an unknown unit state (a malformed answer is flagged, never trusted)."""
        if len(regs) < self.status_count:
            raise ValueError(f"status: got {len(regs)} registers, need {self.status_count}")

        def r(name: str) -> int:
            return regs[self._points[name].address - self.status_start] & 0xFFFF

        units: dict[str, UnitStatus] = {}
        for u in UNITS:
            raw_state = r(f"{u}_state")
            try:
                state = UnitState(raw_state)
            except ValueError:
                raise ValueError(f"status: {u} state {raw_state} unknown") from None
            units[u] = UnitStatus(
                r(f"{u}_ack_seq"),
                state,
                r(f"{u}_step"),
                r(f"{u}_fault_code"),
                r(f"{u}_position_mm"),
            )
        raw_inputs = r("inputs")
        inputs = {n: bool(raw_inputs >> b & 1) for n, b in self.bits("inputs").items()}
        raw_halt = r("halted")
        halted = frozenset(u for u, b in self.bits("halted").items() if raw_halt >> b & 1)
        return RobotStatus(
            units=units,
            inputs=inputs,
            lock_engaged=r("lock_engaged"),
            lock_torque_ok=r("lock_torque_ok"),
            lock_head_count=r("lock_head_count"),
            halted=halted,
            heartbeat=r("heartbeat") if "heartbeat" in self._points else 0,
        )

    def encode_status(self, status: RobotStatus) -> list[int]:
        """The inverse of decode_status (the simulated PLC uses it)."""
        regs = [0] * self.status_count

        def w(name: str, value: int) -> None:
            regs[self._points[name].address - self.status_start] = value & 0xFFFF

        for u in UNITS:
            us = status.units[u]
            w(f"{u}_ack_seq", us.ack_seq)
            w(f"{u}_state", int(us.state))
            w(f"{u}_step", us.step_code)
            w(f"{u}_fault_code", us.fault_code)
            w(f"{u}_position_mm", us.position_mm)
        raw = 0
        for n, b in self.bits("inputs").items():
            if status.inputs.get(n, False):
                raw |= 1 << b
        w("inputs", raw)
        w("lock_engaged", status.lock_engaged)
        w("lock_torque_ok", status.lock_torque_ok)
        w("lock_head_count", status.lock_head_count)
        hb = 0
        for u, b in self.bits("halted").items():
            if u in status.halted:
                hb |= 1 << b
        w("halted", hb)
        if "heartbeat" in self._points:
            w("heartbeat", status.heartbeat)
        return regs

    def decode_commands(self, regs: list[int]) -> dict[str, CommandEcho]:
        out: dict[str, CommandEcho] = {}
        for uname in UNITS:
            a = self.command_address(uname) - self.command_start
            out[uname] = CommandEcho(regs[a], regs[a + 1], regs[a + 2])
        return out
