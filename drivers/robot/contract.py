"""The robot PLC register contract (config/registers/robot-plc.yaml) as typed codec.

Pure: registers <-> typed commands and status. Both the station's client and the simulated PLC
use it, so they cannot disagree about an address.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.datafile import load_model

UNITS: tuple[str, str] = ("vehicle", "rack")
DEFAULT_CONTRACT = Path(__file__).resolve().parents[2] / "config" / "registers" / "robot-plc.yaml"


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PointDef(_Strict):
    name: str
    table: Literal["holding", "input"]
    address: int = Field(ge=0, le=65535)
    type: Literal["u16", "bitfield"]
    access: Literal["r", "rw"]
    unit: str | None = None
    bits: dict[str, int] | None = None


class UnitCommandDef(_Strict):
    step: str
    arg: str
    seq: str


class UnitStatusDef(_Strict):
    ack_seq: str
    state: str
    step: str
    fault_code: str
    position: str


class UnitDef(_Strict):
    halt_bit: int = Field(ge=0, le=15)
    command: UnitCommandDef
    status: UnitStatusDef


class ContractModel(_Strict):
    device: str
    word_order: Literal["big", "little"]
    units: dict[Literal["vehicle", "rack"], UnitDef]
    points: list[PointDef]
    unit_states: dict[str, int]
    steps: dict[Literal["vehicle", "rack"], dict[str, int]]
    fault_codes: dict[int, str]

    @model_validator(mode="after")
    def _check(self) -> ContractModel:
        names = [p.name for p in self.points]
        if len(set(names)) != len(names):
            raise ValueError("duplicate point names")
        by_name = {p.name: p for p in self.points}
        for need in ("halt", "inputs", "lock_engaged", "lock_torque_ok", "lock_head_count"):
            if need not in by_name:
                raise ValueError(f"point {need!r} missing")
        inputs_bits = by_name["inputs"].bits or {}
        for n in INPUT_NAMES:
            if n not in inputs_bits:
                raise ValueError(f"inputs bit {n!r} missing")
        if set(self.units) != set(UNITS):
            raise ValueError("units must be exactly vehicle and rack")
        for uname, u in self.units.items():
            cmd = [by_name.get(n) for n in (u.command.step, u.command.arg, u.command.seq)]
            if any(p is None or p.table != "holding" for p in cmd):
                raise ValueError(f"units.{uname}.command: points must exist in holding")
            addrs = [p.address for p in cmd if p is not None]
            if addrs != list(range(addrs[0], addrs[0] + 3)):
                raise ValueError(f"units.{uname}.command: step, arg, seq must be contiguous")
            for n in u.status.model_dump().values():
                if n not in by_name or by_name[n].table != "input":
                    raise ValueError(f"units.{uname}.status: {n!r} must be an input point")
        return self


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

    def __init__(self, model: ContractModel) -> None:
        self.model = model
        self._points = {p.name: p for p in model.points}
        inp = [p.address for p in model.points if p.table == "input"]
        hold = [p.address for p in model.points if p.table == "holding"]
        self.status_start = min(inp)
        self.status_count = max(inp) - self.status_start + 1
        self.command_start = min(hold)
        self.command_count = max(hold) - self.command_start + 1
        self.halt_address = self._points["halt"].address
        self.halt_bits: dict[str, int] = {u: d.halt_bit for u, d in model.units.items()}
        self.steps: dict[str, dict[str, int]] = {u: dict(s) for u, s in model.steps.items()}
        self.step_names: dict[str, dict[int, str]] = {
            u: {c: n for n, c in s.items()} for u, s in model.steps.items()
        }
        self._units: dict[str, UnitDef] = {str(k): v for k, v in model.units.items()}
        self.fault_names = dict(model.fault_codes)
        self.fault_codes = {n: c for c, n in model.fault_codes.items()}

    @classmethod
    def load(cls, path: Path | str = DEFAULT_CONTRACT) -> RobotContract:
        return cls(load_model(ContractModel, path))

    def address(self, point: str) -> int:
        return self._points[point].address

    def bits(self, point: str) -> dict[str, int]:
        return dict(self._points[point].bits or {})

    def command_address(self, unit: str) -> int:
        return self._points[self._units[unit].command.step].address

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
        for uname, udef in self._units.items():
            s = udef.status
            try:
                state = UnitState(r(s.state))
            except ValueError:
                raise ValueError(f"status: {uname} state {r(s.state)} unknown") from None
            units[uname] = UnitStatus(
                r(s.ack_seq), state, r(s.step), r(s.fault_code), r(s.position)
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

        for uname, udef in self._units.items():
            us = status.units[uname]
            w(udef.status.ack_seq, us.ack_seq)
            w(udef.status.state, int(us.state))
            w(udef.status.step, us.step_code)
            w(udef.status.fault_code, us.fault_code)
            w(udef.status.position, us.position_mm)
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
        for uname in self._units:
            a = self.command_address(uname) - self.command_start
            out[uname] = CommandEcho(regs[a], regs[a + 1], regs[a + 2])
        return out
