"""An independent swap-robot PLC for conformance tests.

Written from the contract alone (docs/robot-plc.md, drivers/robot/robot-plc.yaml, the
interlocks and the moves of docs/swap.md): it shares no code with the daemon's
robot client or its PLC simulator. A pymodbus server (SimDevice with an `action` hook) whose
status registers are computed at each read and whose command registers are judged at each
write.

Like a real PLC it accepts a command when the seq differs from the acknowledged one, the unit
is idle/finished and its halt bit is clear; it faults a step whose source place is empty or
target occupied, refuses motion with the e-stop chain open and faults running steps when it
opens. As a conformance peer it also records every command the contract or the interlocks
forbid (`violations`): a step while an interlock is open, a slot move while that slot's charger
output is live (`output_live(slot)` asks the test rig), a command while busy or halted, a
sequence counter that is not the next one, a command split over several writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

IDLE, BUSY, DONE, FAULT = 0, 1, 2, 3
F_MOTION, F_NO_PACK, F_OCCUPIED, F_HALTED, F_INTERLOCK = 1, 2, 3, 4, 5
F_BUSY, F_UNKNOWN, F_TORQUE, F_ESTOP, F_BAD_ARG = 6, 7, 8, 9, 10

VEHICLE_STEPS = {
    1: "position",
    2: "lift",
    3: "unlock",
    4: "lower_pack",
    5: "shuttle_to_handoff",
    6: "shuttle_to_vehicle",
    7: "raise_and_seat",
    8: "lock",
    9: "verify",
    10: "lower_vehicle",
    11: "release",
}
RACK_STEPS = {1: "fetch", 2: "take", 3: "give", 4: "store", 5: "return_to_shuttle", 6: "put_back"}
SLOT_STEPS = {"fetch", "store", "put_back"}
# docs/swap.md interlocks: robot/shuttle under the car only with HV off and the car immobilised.
UNDER_CAR = {
    "lift",
    "unlock",
    "lower_pack",
    "shuttle_to_handoff",
    "shuttle_to_vehicle",
    "raise_and_seat",
    "lock",
    "verify",
}
# Input bits (register 120).
ESTOP, DOORS, CURTAIN, PRESENT, HV_OFF, IMMOBILISED = 0, 1, 2, 3, 4, 5
UNITS = {"vehicle": (0, 100), "rack": (10, 110)}  # command base, status base
HALT_REG = 20
STATUS_START, STATUS_END = 100, 125


@dataclass
class Unit:
    name: str
    bit: int
    ack_seq: int = 0
    state: int = IDLE
    step: int = 0
    arg: int = 0
    fault: int = 0
    position_mm: int = 0
    started: float = 0.0
    ends: float = 0.0


@dataclass
class PlcViolation:
    t: float
    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass
class Motion:
    t: float
    unit: str
    step: str
    arg: int
    seq: int


@dataclass
class RobotPlcPeer:
    slots: int
    packs_in_slots: dict[int, str]
    step_s: float = 0.1
    lock_heads: int = 8
    output_live: Callable[[int], bool] = lambda slot: False
    # Called when a pack leaves a slot (fetch starts) or enters one (store/put_back done).
    on_slot: Callable[[int, str | None], None] = lambda slot, pack: None
    violations: list[PlcViolation] = field(default_factory=list)
    motions: list[Motion] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.units = {"vehicle": Unit("vehicle", 0), "rack": Unit("rack", 1)}
        self.halt = 0
        self.heartbeat = 0
        self.inputs = {ESTOP: True, DOORS: True, CURTAIN: True, PRESENT: False}
        self.inputs |= {HV_OFF: False, IMMOBILISED: False}
        self.places: dict[str, str | None] = {
            "vehicle": None,
            "shuttle": None,
            "buffer": None,
            "stacker": None,
        }
        self.slot_packs: dict[int, str | None] = {
            s: self.packs_in_slots.get(s) for s in range(1, self.slots + 1)
        }
        self.locks = 0
        self.torque = 0
        self.lifted = False
        self.shuttle_at = "vehicle"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | None = None
        self._scan: asyncio.Task[None] | None = None
        self._serve: asyncio.Task[None] | None = None
        self._leave_at: float | None = None

    # ------------------------------------------------------------------ the world (test rig)
    def now(self) -> float:
        return self._loop.time() if self._loop else 0.0

    def vehicle_arrives(self, pack_id: str) -> None:
        self.places["vehicle"] = pack_id
        self.locks = self.torque = (1 << self.lock_heads) - 1
        self.inputs |= {PRESENT: True, HV_OFF: True, IMMOBILISED: True}

    def set_input(self, bit: int, value: bool) -> None:
        self.inputs[bit] = value

    def violate(self, code: str, detail: str) -> None:
        self.violations.append(PlcViolation(self.now(), code, detail))

    # ------------------------------------------------------------------------- the server
    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        device = SimDevice(
            1,
            simdata=(
                [SimData(0, count=1, values=False, datatype=DataType.BITS)],
                [SimData(0, count=1, values=False, datatype=DataType.BITS)],
                [SimData(0, count=HALT_REG + 1, values=0, datatype=DataType.REGISTERS)],
                [
                    SimData(
                        STATUS_START,
                        count=STATUS_END - STATUS_START + 1,
                        values=0,
                        datatype=DataType.REGISTERS,
                    )
                ],
            ),
            action=self._action,
        )
        self._server = ModbusTcpServer(device, address=(host, port))
        self._serve = asyncio.create_task(self._server.serve_forever(), name="plc-peer-serve")
        self._scan = asyncio.create_task(self._scanner(), name="plc-peer-scan")
        # Serving once the listening socket is up.
        async with asyncio.timeout(5):
            while True:
                try:
                    _, w = await asyncio.open_connection(host, port)
                    w.close()
                    await w.wait_closed()
                    return
                except OSError:
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._scan:
            self._scan.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scan
        if self._server:
            await self._server.shutdown()
        if self._serve:
            self._serve.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._serve

    async def _scanner(self) -> None:
        while True:
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self._scan_once(self.now())
            await asyncio.sleep(0.01)

    def _scan_once(self, now: float) -> None:
        for unit in self.units.values():
            if unit.state != BUSY:
                continue
            step = self._step_name(unit)
            if not self.inputs[ESTOP]:
                self._fail(unit, F_ESTOP)
            elif unit.name == "vehicle" and not self.inputs[CURTAIN]:
                self._fail(unit, F_INTERLOCK)
            elif self.halt >> unit.bit & 1:
                self._fail(unit, F_HALTED)
            elif now >= unit.ends:
                self._finish(unit, step)
        if self._leave_at is not None and now >= self._leave_at:
            self._leave_at = None
            self.inputs |= {PRESENT: False, HV_OFF: False, IMMOBILISED: False}

    def _step_name(self, unit: Unit) -> str:
        table = VEHICLE_STEPS if unit.name == "vehicle" else RACK_STEPS
        return table.get(unit.step, "?")

    def _fail(self, unit: Unit, code: int) -> None:
        unit.state, unit.fault = FAULT, code

    # ---------------------------------------------------------------------- Modbus access
    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code == 4:
            self.reads.append(self.now())
            self._fill_status(start_address, registers)
            return None
        if function_code == 3 or values is None:
            return None
        # A write to the holding block (FC6 or FC16).
        vals = [int(v) for v in values]
        end = address + len(vals) - 1
        for name, (base, _) in UNITS.items():
            if address <= base + 2 and end >= base:
                if address != base or len(vals) < 3 or function_code != 16:
                    self.violate(
                        "split_command",
                        f"{name} command written as FC{function_code} at {address}+{len(vals)}"
                        " (step, arg, seq must land in one FC16 write)",
                    )
                    return ExcCodes.ILLEGAL_VALUE
                self._command(self.units[name], vals[0], vals[1], vals[2])
        if address <= HALT_REG <= end:
            self._set_halt(vals[HALT_REG - address])
        for a in range(address, end + 1):
            if not (0 <= a <= 2 or 10 <= a <= 12 or a == HALT_REG):
                self.violate("write_unmapped", f"write to holding {a}")
                return ExcCodes.ILLEGAL_ADDRESS
        return None

    def _fill_status(self, start: int, regs: list[int]) -> None:
        def put(addr: int, value: int) -> None:
            regs[addr - start] = value & 0xFFFF

        for name, (_, sbase) in UNITS.items():
            u = self.units[name]
            put(sbase, u.ack_seq)
            put(sbase + 1, u.state)
            put(sbase + 2, u.step)
            put(sbase + 3, u.fault)
            put(sbase + 4, u.position_mm)
        put(120, sum(1 << bit for bit, on in self.inputs.items() if on))
        put(121, self.locks)
        put(122, self.torque)
        put(123, self.lock_heads)
        put(124, self.halt)
        put(125, self.heartbeat)

    def _set_halt(self, value: int) -> None:
        if value & ~3:
            self.violate("halt_bits", f"halt register {value:#x}: only bits 0 and 1 exist")
        self.halt = value & 3
        for unit in self.units.values():
            if self.halt >> unit.bit & 1 and unit.state == BUSY:
                self._fail(unit, F_HALTED)

    # -------------------------------------------------------------------------- commands
    def _command(self, unit: Unit, step: int, arg: int, seq: int) -> None:
        if seq == unit.ack_seq:
            return  # idempotent rewrite (after a restart or a lost acknowledgement)
        if seq == 0:
            self.violate("seq_zero", f"{unit.name} seq 0 (seq runs 1..65535)")
            return
        if unit.ack_seq != 0:
            expected = 1 if unit.ack_seq == 0xFFFF else unit.ack_seq + 1
            if seq != expected:
                self.violate("seq_not_next", f"{unit.name} seq {seq} after {unit.ack_seq}")
        table = VEHICLE_STEPS if unit.name == "vehicle" else RACK_STEPS
        name = table.get(step, f"#{step}")
        if unit.state == BUSY:
            self.violate(
                "command_while_busy", f"{unit.name} {name} while {self._step_name(unit)} runs"
            )
            return
        if self.halt >> unit.bit & 1:
            self.violate("command_while_halted", f"{unit.name} {name} with its halt bit set")
            return
        # Accepted: the PLC acknowledges, then judges the step itself.
        unit.ack_seq, unit.step, unit.arg, unit.fault = seq, step, arg, 0
        unit.state = BUSY
        unit.started = self.now()
        unit.ends = unit.started + self.step_s
        self.motions.append(Motion(unit.started, unit.name, name, arg, seq))
        fault = self._judge(unit, name, arg)
        if fault:
            self._fail(unit, fault)
        elif name == "fetch":
            # The connector unmates as the stacker pulls the pack out.
            self.on_slot(arg, None)

    def _judge(self, unit: Unit, name: str, arg: int) -> int:
        """The interlocks and the pack flow: a fault code, and a violation when the station
        should have known better."""
        if name.startswith("#"):
            self.violate("unknown_step", f"{unit.name} step {name}")
            return F_UNKNOWN
        if not self.inputs[ESTOP]:
            self.violate("interlock", f"{unit.name} {name} commanded with the e-stop chain open")
            return F_ESTOP
        if not self.inputs[DOORS]:
            self.violate("interlock", f"{unit.name} {name} commanded with a door open")
            return F_INTERLOCK
        if unit.name == "vehicle":
            if not self.inputs[CURTAIN]:
                self.violate("interlock", f"{name} commanded with the light curtain broken")
                return F_INTERLOCK
            if not self.inputs[PRESENT]:
                self.violate("interlock", f"{name} commanded with no vehicle present")
                return F_INTERLOCK
            if name in UNDER_CAR and not (self.inputs[HV_OFF] and self.inputs[IMMOBILISED]):
                self.violate("interlock", f"{name} under a car whose HV is on or not immobilised")
                return F_INTERLOCK
            if arg != 0:
                self.violate("bad_argument", f"vehicle {name} with arg {arg} (0 expected)")
        if name in SLOT_STEPS:
            if not 1 <= arg <= self.slots:
                self.violate("bad_argument", f"{name} slot {arg} of {self.slots}")
                return F_BAD_ARG
            if self.output_live(arg):
                self.violate(
                    "slot_output_live", f"{name} at slot {arg} while its charger output is live"
                )
        elif unit.name == "rack" and arg != 0:
            self.violate("bad_argument", f"rack {name} with arg {arg} (0 expected)")
        return self._check_places(unit, name, arg)

    def _check_places(self, unit: Unit, name: str, arg: int) -> int:
        p = self.places
        src, dst = _MOVES.get(name, (None, None))
        src_has = self._held(src, arg) if src else None
        dst_has = self._held(dst, arg) if dst else None
        if src and src_has is None:
            self.violate(
                "no_pack_at_source", f"{name}: nothing at {src}{arg if src == 'slot' else ''}"
            )
            return F_NO_PACK
        if dst and dst not in ("away",) and dst_has is not None:
            self.violate("target_occupied", f"{name}: {dst} holds {dst_has}")
            return F_OCCUPIED
        if name in ("take", "give") and self.shuttle_at != "handoff":
            self.violate("sequence", f"{name} while the shuttle is at the {self.shuttle_at}")
            return F_MOTION
        if name == "lower_pack" and (self.locks or not self.lifted):
            self.violate(
                "sequence", f"lower_pack with heads {self.locks:#x} engaged / lifted={self.lifted}"
            )
            return F_MOTION
        if name == "raise_and_seat" and self.shuttle_at != "vehicle":
            self.violate("sequence", "raise_and_seat with the shuttle away from the vehicle")
            return F_MOTION
        if name == "lower_vehicle":
            full = (1 << self.lock_heads) - 1
            clear = p["vehicle"] is None and self.locks == 0
            locked = p["vehicle"] is not None and self.locks == full
            if not (clear or locked):
                self.violate(
                    "interlock",
                    f"lower_vehicle with the pack neither locked nor clear (heads {self.locks:#x})",
                )
                return F_INTERLOCK
        if name == "release" and self.lifted:
            self.violate("sequence", "release with the car still lifted")
            return F_MOTION
        return 0

    def _held(self, place: str, arg: int) -> str | None:
        if place == "slot":
            return self.slot_packs.get(arg)
        if place == "away":
            return None
        return self.places[place]

    def _finish(self, unit: Unit, name: str) -> None:
        src, dst = _MOVES.get(name, (None, None))
        if src and dst:
            pack = self._held(src, unit.arg)
            if src == "slot":
                self.slot_packs[unit.arg] = None
            else:
                self.places[src] = None
            if dst == "slot":
                self.slot_packs[unit.arg] = pack
                self.on_slot(unit.arg, pack)
            elif dst != "away":
                self.places[dst] = pack
        if name == "lift":
            self.lifted = True
        elif name == "lower_vehicle":
            self.lifted = False
        elif name == "unlock":
            self.locks = self.torque = 0
        elif name == "lock":
            self.locks = self.torque = (1 << self.lock_heads) - 1
        elif name == "shuttle_to_handoff":
            self.shuttle_at = "handoff"
        elif name == "shuttle_to_vehicle":
            self.shuttle_at = "vehicle"
        elif name == "release":
            self.locks = self.torque = 0
            self._leave_at = self.now() + 0.3
        unit.position_mm = (unit.position_mm + 100) % 5000
        unit.state = DONE


# Pack moves of each step (docs/robot-plc.md step table): (from, to).
_MOVES: dict[str, tuple[str | None, str | None]] = {
    "lower_pack": ("vehicle", "shuttle"),
    "raise_and_seat": ("shuttle", "vehicle"),
    "release": ("vehicle", "away"),
    "fetch": ("slot", "buffer"),
    "take": ("shuttle", "stacker"),
    "give": ("buffer", "shuttle"),
    "store": ("stacker", "slot"),
    "return_to_shuttle": ("stacker", "shuttle"),
    "put_back": ("buffer", "slot"),
}
