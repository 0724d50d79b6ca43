"""Simulated swap robot PLC: a pymodbus TCP server implementing drivers/robot/robot-plc.yaml.

Two units (vehicle side, rack side) run steps whose durations (docs/swap.md defaults) are divided by
`speed`. The PLC tracks which physical places hold a pack, so a wrong command faults just as a
real machine would. Status is computed when it is read (the PLC "scans" on every request), so
there is no timer task. Fault injection: step fault, stuck step, torque failure on k heads,
emergency stop, light curtain broken mid-step. Every accepted command is recorded in `motions`
(tests check that no motion ever runs twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.core.clock import Clock, SystemClock
from drivers.robot.contract import RobotContract, RobotStatus, UnitState, UnitStatus

# The fault catalogue's names (sim.faults describes them): latching ones restore on clear,
# one-shot ones act on the next run of their step.
FAULT_NAMES = (
    "emergency_stop",
    "light_curtain",
    "door_open",
    "step_fault",
    "stuck_step",
    "torque_failure",
    "vehicle_not_ready",
    "frozen_heartbeat",
)

# The step table of docs/swap.md (seconds); recovery moves are our own assumption.
DEFAULT_DURATIONS_S: dict[tuple[str, str], float] = {
    ("vehicle", "position"): 30,
    ("vehicle", "lift"): 10,
    ("vehicle", "unlock"): 15,
    ("vehicle", "lower_pack"): 8,
    ("vehicle", "shuttle_to_handoff"): 8,
    ("vehicle", "shuttle_to_vehicle"): 8,
    ("vehicle", "raise_and_seat"): 10,
    ("vehicle", "lock"): 15,
    ("vehicle", "verify"): 10,
    ("vehicle", "lower_vehicle"): 10,
    ("vehicle", "release"): 5,
    ("rack", "fetch"): 20,
    ("rack", "take"): 5,
    ("rack", "give"): 5,
    ("rack", "store"): 20,
    ("rack", "return_to_shuttle"): 5,
    ("rack", "put_back"): 20,
}


@dataclass(frozen=True, slots=True)
class RackSlot:
    """A rack slot as the PLC knows it: by its number (the step argument), never by the
    station's slot id (that is `edge.swap.inventory.SlotPlace`)."""

    number: int


# Where the PLC sees a pack: a handling place ("vehicle", "shuttle", "buffer", "stacker") or a
# numbered rack slot.
PlcPlace = str | RackSlot

# pack moves per step: (source, target); "slot" means slot number `arg`
_MOVES: dict[tuple[str, str], tuple[str, str]] = {
    ("vehicle", "lower_pack"): ("vehicle", "shuttle"),
    ("vehicle", "raise_and_seat"): ("shuttle", "vehicle"),
    ("rack", "fetch"): ("slot", "buffer"),
    ("rack", "take"): ("shuttle", "stacker"),
    ("rack", "give"): ("buffer", "shuttle"),
    ("rack", "store"): ("stacker", "slot"),
    ("rack", "return_to_shuttle"): ("stacker", "shuttle"),
    ("rack", "put_back"): ("buffer", "slot"),
}
_SLOT_STEPS = {("rack", "fetch"), ("rack", "store"), ("rack", "put_back")}


@dataclass
class Motion:
    unit: str
    step: str
    arg: int
    seq: int


@dataclass
class _Unit:
    name: str
    state: UnitState = UnitState.IDLE
    ack_seq: int = 0
    step_code: int = 0
    arg: int = 0
    fault_code: int = 0
    position_mm: int = 0
    ends_at: float = 0.0
    stuck: bool = False


@dataclass
class _Faults:
    step_fault: set[tuple[str, str]] = field(default_factory=set)  # fail next run of step
    stuck: set[tuple[str, str]] = field(default_factory=set)  # next run never finishes
    torque_heads: int = 0  # heads out of window on the next lock


class RobotPlcSim:
    def __init__(
        self,
        contract: RobotContract | None = None,
        *,
        speed: float = 1.0,
        durations_s: dict[tuple[str, str], float] | None = None,
        slots: int = 12,
        occupied_slots: set[int] | None = None,
        lock_heads: int = 8,
        clock: Clock | None = None,
        device_id: int = 1,
    ) -> None:
        self.contract = contract or RobotContract.load()
        self.speed = speed
        self.durations_s = {**DEFAULT_DURATIONS_S, **(durations_s or {})}
        self.clock = clock or SystemClock()
        self.device_id = device_id
        self.slot_count = slots
        self.slots: dict[int, bool] = {
            n: n in (occupied_slots or set()) for n in range(1, slots + 1)
        }
        self.places: dict[str, bool] = {
            "vehicle": False,
            "shuttle": False,
            "buffer": False,
            "stacker": False,
        }
        self.shuttle_at = "vehicle"
        self.lock_heads = lock_heads
        self.lock_engaged = 0
        self.lock_torque_ok = 0
        self.inputs: dict[str, bool] = {
            "estop_chain_healthy": True,
            "doors_closed": True,
            "light_curtain_clear": True,
            "vehicle_present": False,
            "vehicle_hv_off": False,
            "vehicle_immobilised": False,
        }
        self.units = {u: _Unit(u) for u in ("vehicle", "rack")}
        self.halt_bits: frozenset[str] = frozenset()
        self.faults = _Faults()
        self.motions: list[Motion] = []
        self.ignored_commands = 0
        self.released = False  # the vehicle's clamps were released (it may leave)
        self.heartbeat = 0
        # Frozen image: status reads serve the registers of the moment it froze (heartbeat too).
        self.frozen_status: list[int] | None = None
        # Called with every step that starts running (monitors see the PLC's own view).
        self.step_observers: list[Callable[[Motion], None]] = []
        self.changed = asyncio.Event()
        # Called with (source, target) places (`RackSlot(n)`, `vehicle`, ...) when a step that
        # carries a pack finishes, before the step reads DONE: a simulated world moves the
        # pack's BMS and charger load along with it.
        self.on_move: Callable[[PlcPlace, PlcPlace], None] | None = None
        self._server: ModbusTcpServer | None = None
        c = self.contract
        self._device = SimDevice(
            id=device_id,
            simdata=[
                SimData(c.command_start, count=c.command_count, datatype=DataType.REGISTERS),
                SimData(
                    c.status_start,
                    count=c.status_count,
                    datatype=DataType.REGISTERS,
                    readonly=True,
                ),
            ],
            action=self._action,
        )

    # ----- server

    async def start(self, host: str = "127.0.0.1", port: int = 5020) -> None:
        self._server = ModbusTcpServer(self._device, address=(host, port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        self.update()
        c = self.contract
        if set_values is not None and function_code in (6, 16):
            vals = [int(v) for v in set_values]
            for unit in self.units:
                a = c.command_address(unit)
                if address <= a + 2 < address + len(vals):
                    cur = registers[a - start_address : a - start_address + 3]
                    new = list(cur)
                    for i in range(3):
                        if address <= a + i < address + len(vals):
                            new[i] = vals[a + i - address]
                    if new[2] != cur[2]:
                        self.command(unit, new[0], new[1], new[2])
            if address <= c.halt_address < address + len(vals):
                raw = vals[c.halt_address - address]
                self.set_halt(frozenset(u for u, b in c.halt_bits.items() if raw >> b & 1))
        else:
            if self.frozen_status is not None:
                regs = self.frozen_status
            else:
                self.heartbeat = (self.heartbeat + 1) & 0xFFFF
                regs = c.encode_status(self.status())
            off = c.status_start - start_address
            registers[off : off + len(regs)] = regs

    # ----- PLC logic

    def status(self) -> RobotStatus:
        return RobotStatus(
            units={
                n: UnitStatus(u.ack_seq, u.state, u.step_code, u.fault_code, u.position_mm)
                for n, u in self.units.items()
            },
            inputs=dict(self.inputs),
            lock_engaged=self.lock_engaged,
            lock_torque_ok=self.lock_torque_ok,
            lock_head_count=self.lock_heads,
            halted=self.halt_bits,
            heartbeat=self.heartbeat,
        )

    def step_of(self, unit: str) -> str:
        return self.contract.step_name(unit, self.units[unit].step_code)

    def _fault(self, u: _Unit, name: str) -> None:
        u.state = UnitState.FAULT
        u.fault_code = self.contract.fault_codes[name]
        self.changed.set()

    def _source_target(self, unit: str, step: str, arg: int) -> tuple[PlcPlace, PlcPlace] | None:
        mv = _MOVES.get((unit, step))
        if mv is None:
            return None
        src, dst = mv
        return (RackSlot(arg) if src == "slot" else src, RackSlot(arg) if dst == "slot" else dst)

    def _occupied(self, place: PlcPlace) -> bool:
        if isinstance(place, RackSlot):
            return self.slots[place.number]
        return self.places[place]

    def _set(self, place: PlcPlace, value: bool) -> None:
        if isinstance(place, RackSlot):
            self.slots[place.number] = value
        else:
            self.places[place] = value

    def command(self, unit: str, code: int, arg: int, seq: int) -> None:
        u = self.units[unit]
        if seq == u.ack_seq or unit in self.halt_bits or u.state == UnitState.BUSY:
            self.ignored_commands += 1
            return
        u.ack_seq = seq
        u.step_code = code
        u.arg = arg
        u.fault_code = 0
        step = self.contract.step_names[unit].get(code)
        if step is None:
            self._fault(u, "unknown_step")
            return
        self.motions.append(Motion(unit, step, arg, seq))
        if not self.inputs["estop_chain_healthy"]:
            self._fault(u, "emergency_stop")
            return
        if (unit, step) in _SLOT_STEPS and arg not in self.slots:
            self._fault(u, "bad_argument")
            return
        st = self._source_target(unit, step, arg)
        if st is not None:
            src, dst = st
            if not self._occupied(src):
                self._fault(u, "no_pack_at_source")
                return
            if self._occupied(dst):
                self._fault(u, "target_occupied")
                return
        if step == "position" and not self.inputs["vehicle_present"]:
            self._fault(u, "interlock_open")
            return
        u.state = UnitState.BUSY
        for observe in self.step_observers:
            observe(self.motions[-1])
        u.stuck = (unit, step) in self.faults.stuck
        self.faults.stuck.discard((unit, step))
        u.ends_at = self.clock.monotonic() + self.durations_s[(unit, step)] / self.speed
        self.changed.set()

    def _finish(self, u: _Unit) -> None:
        step = self.contract.step_name(u.name, u.step_code)
        if (u.name, step) in self.faults.step_fault:
            self.faults.step_fault.discard((u.name, step))
            self._fault(u, "motion_failed")
            return
        st = self._source_target(u.name, step, u.arg)
        if st is not None:
            self._set(st[0], False)
            self._set(st[1], True)
            if self.on_move is not None:
                self.on_move(st[0], st[1])
        all_heads = (1 << self.lock_heads) - 1
        if step == "unlock":
            self.lock_engaged = 0
            self.lock_torque_ok = 0
        elif step == "lock":
            self.lock_engaged = all_heads
            bad = (1 << self.faults.torque_heads) - 1
            self.lock_torque_ok = all_heads & ~bad
            self.faults.torque_heads = 0
        elif step in ("shuttle_to_handoff", "shuttle_to_vehicle"):
            self.shuttle_at = "handoff" if step == "shuttle_to_handoff" else "vehicle"
        elif step == "release":
            self.released = True
        u.position_mm = u.step_code * 100
        u.state = UnitState.DONE
        self.changed.set()

    def update(self) -> None:
        """One PLC scan: finish steps whose time is up, apply safety inputs."""
        now = self.clock.monotonic()
        for u in self.units.values():
            if u.state != UnitState.BUSY:
                continue
            if not self.inputs["estop_chain_healthy"]:
                self._fault(u, "emergency_stop")
            elif u.name == "vehicle" and not self.inputs["light_curtain_clear"]:
                self._fault(u, "interlock_open")
            elif not u.stuck and now >= u.ends_at:
                self._finish(u)

    def set_halt(self, units: frozenset[str]) -> None:
        # A halt stops a running step (FAULT, code halted); a finished step stays DONE so the
        # station can still tell that the motion completed before the halt arrived.
        for name, u in self.units.items():
            if name in units and u.state == UnitState.BUSY:
                self._fault(u, "halted")
        self.halt_bits = units
        self.changed.set()

    # ----- test and bench controls

    def set_input(self, name: str, value: bool) -> None:
        if name not in self.inputs:
            raise KeyError(name)
        self.update()
        self.inputs[name] = value
        self.update()
        self.changed.set()

    def emergency_stop(self, pressed: bool = True) -> None:
        self.set_input("estop_chain_healthy", not pressed)

    def break_curtain(self, broken: bool = True) -> None:
        self.set_input("light_curtain_clear", not broken)

    def inject_step_fault(self, unit: str, step: str) -> None:
        self.faults.step_fault.add((unit, step))

    def inject_stuck(self, unit: str, step: str) -> None:
        self.faults.stuck.add((unit, step))

    def inject_torque_failure(self, heads: int) -> None:
        self.faults.torque_heads = heads

    def freeze(self, frozen: bool = True) -> None:
        """A PLC whose status image stops updating (its heartbeat frozen); commands still land."""
        self.frozen_status = self.contract.encode_status(self.status()) if frozen else None

    def apply_fault(
        self, fault: str, *, clear: bool = False, params: Mapping[str, Any] | None = None
    ) -> None:
        """Fault injection by its catalogue name (FAULT_NAMES; `swapd sim fault` and
        `<root>/sim/robot/fault` reach it through sim.faults.RobotInjector). Latching faults
        clear by restoring the input; one-shot ones (`step_fault`, `stuck_step` with `unit` and
        `step`, `torque_failure` with `heads`) are consumed by the next run, and clear withdraws
        those still pending. Raises ValueError for an unknown fault or unusable params."""
        on = not clear
        p = params or {}
        if fault == "emergency_stop":
            self.emergency_stop(on)
        elif fault == "light_curtain":
            self.break_curtain(on)
        elif fault == "door_open":
            self.set_input("doors_closed", not on)
        elif fault == "vehicle_not_ready":
            self.set_input("vehicle_hv_off", not on)
            self.set_input("vehicle_immobilised", not on)
        elif fault == "frozen_heartbeat":
            self.freeze(on)
        elif fault == "torque_failure":
            heads = p.get("heads", 1) if on else 0
            if isinstance(heads, bool) or not isinstance(heads, int):
                raise ValueError(f"torque_failure: heads must be a count, got {heads!r}")
            if not 0 <= heads <= self.lock_heads:
                raise ValueError(f"torque_failure: heads must be 0..{self.lock_heads}")
            self.inject_torque_failure(heads)
        elif fault in ("step_fault", "stuck_step"):
            pending = self.faults.step_fault if fault == "step_fault" else self.faults.stuck
            if clear and not p:
                pending.clear()
                return
            unit, step = p.get("unit"), p.get("step")
            if unit not in self.units or not isinstance(step, str):
                raise ValueError(f"{fault}: params unit (vehicle|rack) and step are required")
            if step not in self.contract.steps[unit]:
                raise ValueError(f"{fault}: {unit} has no PLC step {step!r}")
            if clear:
                pending.discard((unit, step))
            else:
                pending.add((unit, step))
        else:
            raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULT_NAMES)})")

    def vehicle_arrives(self, *, with_pack: bool = True, ready: bool = True) -> None:
        self.places["vehicle"] = with_pack
        self.released = False
        self.lock_engaged = (1 << self.lock_heads) - 1 if with_pack else 0
        self.lock_torque_ok = self.lock_engaged
        self.inputs["vehicle_present"] = True
        self.inputs["vehicle_hv_off"] = ready
        self.inputs["vehicle_immobilised"] = ready
        self.changed.set()

    def vehicle_departs(self) -> None:
        self.places["vehicle"] = False
        self.lock_engaged = 0
        self.lock_torque_ok = 0
        self.inputs["vehicle_present"] = False
        self.inputs["vehicle_hv_off"] = False
        self.inputs["vehicle_immobilised"] = False
        self.changed.set()

    def busy_step(self, unit: str) -> str | None:
        self.update()
        u = self.units[unit]
        return self.step_of(unit) if u.state == UnitState.BUSY else None

    def occupancy(self) -> dict[PlcPlace, bool]:
        out: dict[PlcPlace, bool] = {RackSlot(n): v for n, v in self.slots.items()}
        out.update(self.places)
        return out


async def _auto_vehicles(sim: RobotPlcSim, gap_s: float) -> None:
    """Keep a vehicle in the bay: when one is released it leaves and the next arrives."""
    while True:
        sim.update()
        if not sim.inputs["vehicle_present"]:
            await asyncio.sleep(gap_s)
            sim.vehicle_arrives()
        elif sim.released and sim.units["vehicle"].state != UnitState.BUSY:
            sim.vehicle_departs()
        await asyncio.sleep(0.005)


async def _serve(args: argparse.Namespace) -> None:
    occupied = {int(x) for x in args.occupied.split(",") if x}
    sim = RobotPlcSim(speed=args.speed, slots=args.slots, occupied_slots=occupied)
    await sim.start(args.host, args.port)
    print(f"ready {args.host}:{args.port}", flush=True)
    async with asyncio.TaskGroup() as tg:
        if args.auto_vehicles:
            tg.create_task(_auto_vehicles(sim, args.vehicle_gap_s), name="sim-vehicles")
        tg.create_task(asyncio.Event().wait(), name="sim-forever")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="robot_plc", description="Simulated swap robot PLC")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--slots", type=int, default=12)
    p.add_argument("--occupied", default="", help="comma-separated occupied slot numbers")
    p.add_argument("--auto-vehicles", action="store_true")
    p.add_argument("--vehicle-gap-s", type=float, default=0.05)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
