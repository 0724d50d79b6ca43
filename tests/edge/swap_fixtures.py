"""Swap room fixtures: a pure rig (sequence + the simulated PLC's logic on a ManualClock, no
sockets) and a live rig (coordinator + simulated PLC over loopback Modbus TCP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from drivers.core.alarm_sink import ClearAlarm, RaiseAlarm
from drivers.core.clock import SystemClock
from drivers.robot.contract import RobotContract
from drivers.robot.modbus_port import ModbusRobotPort
from edge.swap.choice import SlotView
from edge.swap.coordinator import SwapCoordinator
from edge.swap.inventory import Handling, SlotPlace
from edge.swap.journal import Journal
from edge.swap.messages import (
    Action,
    CommandStep,
    Emit,
    Event,
    PackDocked,
    PackIdentity,
    PackRemoved,
    PackSeated,
    PlcStatus,
    RequestAllOutputsOff,
    RequestOutputOff,
    SetHalt,
    SlotOutputOff,
    StartSwap,
)
from edge.swap.sequence import SwapSequence
from edge.swap.steps import StepGraph, load_step_graph
from edge.telemetry.models import Details
from sim.devices.robot_plc import RackSlot, RobotPlcSim
from sim.devices.vehicle import SimVehicle
from tests.conftest import free_port
from tests.doubles import ManualClock, RecordingAlarmSink

SLOTS = {f"S{n}": n for n in range(1, 7)}
# slot -> (pack id, SOC %, cycles)
RACK: dict[str, tuple[str, float, int]] = {
    "S1": ("P-001", 95.0, 100),
    "S2": ("P-002", 97.0, 10),
    "S3": ("P-003", 50.0, 5),
}
PACK_TYPE = "T20"
ANNOUNCED = "P-CAR-1"


def slot_views(
    rack: dict[str, tuple[str, float, int]], **overrides: dict[str, Any]
) -> tuple[SlotView, ...]:
    out = []
    for sid in SLOTS:
        kw: dict[str, Any] = {"slot_id": sid}
        if sid in rack:
            pid, soc, cyc = rack[sid]
            kw.update(pack_id=pid, pack_type=PACK_TYPE, soc_pct=soc, cycles=cyc)
        kw.update(overrides.get(sid, {}))
        out.append(SlotView(**kw))
    return tuple(out)


def wire(details: Details) -> dict[str, Any]:
    """An event's details as published (fields not set left out, for short asserts)."""
    out: dict[str, Any] = details.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


class CoreRig:
    """The pure sequence driven against the simulated PLC's logic, all on a ManualClock."""

    def __init__(self, graph: StepGraph | None = None, *, auto_outputs: bool = True) -> None:
        self.clock = ManualClock()
        self.graph = graph or load_step_graph()
        self.core = SwapSequence(self.graph, SLOTS)
        self.sim = RobotPlcSim(
            self.graph.contract, occupied_slots={SLOTS[s] for s in RACK}, clock=self.clock
        )
        self.auto_outputs = auto_outputs
        self.pending_outputs: list[str] = []
        self.commands: list[CommandStep] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.published: list[tuple[str, dict[str, Any]]] = []  # as the outbox stores them
        self.alarms: set[tuple[str, str]] = set()
        self.all_off = 0
        self.emergency = 0
        self.resets: list[tuple[frozenset[str], frozenset[str]]] = []
        self.reserved: frozenset[str] = frozenset()
        self.journal: list[Any] = []
        self.seated: list[PackSeated | PackRemoved] = []
        for sid, (pid, _, _) in RACK.items():
            self.feed(PackDocked(sid, PackIdentity(pid, PACK_TYPE)))
        self.vehicle = SimVehicle(self.sim, "V1", ANNOUNCED, PACK_TYPE)

    def feed(self, ev: Event) -> list[Action]:
        acts = self.core.handle(ev, self.clock.monotonic())
        self.apply(acts)
        return acts

    def apply(self, acts: list[Action]) -> None:
        for a in acts:
            if isinstance(a, CommandStep):
                self.commands.append(a)
                self.sim.command(a.unit, a.step_code, a.arg, a.seq)
            elif isinstance(a, SetHalt):
                self.sim.set_halt(a.units)
            elif isinstance(a, RequestOutputOff):
                self.pending_outputs.append(a.slot_id)
            elif isinstance(a, RequestAllOutputsOff):
                self.all_off += 1
            elif isinstance(a, Emit):
                self.events.append((a.type, wire(a.details)))
                self.published.append((a.type, a.details.model_dump(mode="json", by_alias=True)))
            elif isinstance(a, PackSeated | PackRemoved):
                self.seated.append(a)
            elif isinstance(a, RaiseAlarm):
                self.alarms.add((a.code, a.source))
            elif isinstance(a, ClearAlarm):
                self.alarms.discard((a.code, a.source))
            else:
                self.journal.append(a)

    def poll(self) -> None:
        if self.auto_outputs:
            while self.pending_outputs:
                self.feed(SlotOutputOff(self.pending_outputs.pop(0)))
        self.sim.update()
        self.sim.heartbeat = (self.sim.heartbeat + 1) & 0xFFFF  # a live PLC's scan counter
        self.feed(PlcStatus(self.sim.status()))
        self.apply(self.core.tick(self.clock.monotonic()))

    def start(self, **kw: Any) -> None:
        self.poll()
        self.feed(
            StartSwap(
                kw.get("vehicle_id", "V1"),
                kw.get("pack_type", PACK_TYPE),
                kw.get("announced", ANNOUNCED),
                kw.get("views", slot_views(RACK)),
            )
        )

    def run(self, until: Callable[[], bool], max_s: float = 400.0, dt: float = 0.5) -> None:
        t_end = self.clock.monotonic() + max_s
        while not until():
            if self.clock.monotonic() > t_end:
                raise AssertionError(f"condition not met in {max_s} s; mode {self.core.mode}")
            self.clock.advance(dt)
            self.poll()

    def event_types(self) -> list[str]:
        return [t for t, _ in self.events]

    def step_events(self, status: str) -> list[str]:
        return [d["step"] for t, d in self.events if t == "swap.step" and d["state"] == status]

    def commanded(self) -> list[str]:
        return [c.step_id for c in self.commands]

    def has(self, type_: str) -> bool:
        return any(t == type_ for t, _ in self.events)

    def place(self, pack: str) -> str | None:
        """Where the inventory has `pack`, as written in files (`slot:<id>`, `vehicle`, ...)."""
        rec = self.core.inventory.get(pack)
        return str(rec.place) if rec else None

    def check_matches_sim(self) -> None:
        """Inventory and the PLC's physical places agree (occupied <=> a pack recorded)."""
        check_occupancy(self.sim, self.core.inventory)


def check_occupancy(sim: RobotPlcSim, inventory: Any) -> None:
    """Inventory and the PLC's physical places agree (occupied <=> a pack recorded)."""
    if True:
        occ = sim.occupancy()
        if sim.released:
            occ["vehicle"] = False  # released: the car leaves with its pack
        for plc_place, full in occ.items():
            # the rigs number their slots S<n>, n the PLC's slot number
            place = (
                SlotPlace(f"S{plc_place.number}")
                if isinstance(plc_place, RackSlot)
                else Handling(plc_place)
            )
            assert (inventory.at(place) is not None) == full, place


class Events:
    """EventSink for the live rig."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> None:
        assert isinstance(details, Details), details  # the swap room emits payload models
        self.items.append((event_type, wire(details)))
        self.changed.set()

    async def wait_for(self, pred: Callable[[], bool], timeout_s: float = 20.0) -> None:
        # wakes on each event, and every 10 ms for conditions no event announces
        async with asyncio.timeout(timeout_s):
            while not pred():
                self.changed.clear()
                try:
                    async with asyncio.timeout(0.01):
                        await self.changed.wait()
                except TimeoutError:
                    pass

    def has(self, type_: str, **match: Any) -> bool:
        return any(
            t == type_ and all(d.get(k) == v for k, v in match.items()) for t, d in self.items
        )


class Outputs:
    def __init__(self) -> None:
        self.off: list[str] = []
        self.all_off = 0
        self.emergency = 0
        self.resets: list[tuple[frozenset[str], frozenset[str]]] = []
        self.reserved: frozenset[str] = frozenset()
        self.seated: list[str] = []
        self.removed: list[str] = []

    async def output_off(self, slot_id: str) -> None:
        self.off.append(slot_id)

    async def all_outputs_off(self) -> None:
        self.all_off += 1

    def emergency_off(self) -> None:
        self.emergency += 1

    def emergency_reset(self, occupied: frozenset[str], reserved: frozenset[str]) -> None:
        self.resets.append((occupied, reserved))

    def set_reserved(self, reserved: frozenset[str], occupied: frozenset[str]) -> None:
        self.reserved = reserved

    def pack_seated(self, slot_id: str) -> None:
        self.seated.append(slot_id)

    def pack_removed(self, slot_id: str) -> None:
        self.removed.append(slot_id)


class Views:
    def __init__(self, rack: dict[str, tuple[str, float, int]]) -> None:
        self.rack = dict(rack)

    def slot_views(self) -> list[SlotView]:
        return list(slot_views(self.rack))


class LiveRig:
    def __init__(
        self,
        sim: RobotPlcSim,
        coord: SwapCoordinator,
        events: Events,
        outputs: Outputs,
        alarms: RecordingAlarmSink,
        journal: Journal,
        vehicle: SimVehicle,
    ) -> None:
        self.sim = sim
        self.coord = coord
        self.events = events
        self.outputs = outputs
        self.alarms = alarms
        self.journal = journal
        self.vehicle = vehicle
        self.task: asyncio.Task[None] | None = None

    def task_done(self) -> bool:
        return self.task is not None and self.task.done()

    def task_exception(self) -> BaseException | None:
        assert self.task is not None
        return self.task.exception()


def make_coordinator(
    port: ModbusRobotPort,
    journal: Journal,
    graph: StepGraph,
    events: Events,
    outputs: Outputs,
    alarms: RecordingAlarmSink,
    views: Views,
) -> SwapCoordinator:
    return SwapCoordinator(
        graph=graph,
        slot_numbers=SLOTS,
        port=port,
        journal=journal,
        clock=SystemClock(),
        outputs=outputs,
        slots=views,
        events=events,
        alarms=alarms,
        poll_active_s=0.01,
        poll_idle_s=0.05,
    )


@asynccontextmanager
async def live_rig(
    tmp_path: Path, *, speed: float = 200.0, graph: StepGraph | None = None
) -> AsyncIterator[LiveRig]:
    contract = RobotContract.load()
    graph = graph or load_step_graph(contract=contract)
    sim = RobotPlcSim(contract, speed=speed, occupied_slots={SLOTS[s] for s in RACK})
    tcp = free_port()
    await sim.start("127.0.0.1", tcp)
    port = ModbusRobotPort(contract, "127.0.0.1", tcp)
    journal = Journal(tmp_path / "swap-journal.sqlite")
    events, outputs, alarms = Events(), Outputs(), RecordingAlarmSink()
    coord = make_coordinator(port, journal, graph, events, outputs, alarms, Views(RACK))
    await port.connect()
    task = asyncio.create_task(coord.run(), name="test-swap-coordinator")
    try:
        async with asyncio.timeout(10):
            await coord.online.wait()
        for sid, (pid, _, _) in RACK.items():
            await coord.pack_docked(sid, PackIdentity(pid, PACK_TYPE))
        vehicle = SimVehicle(sim, "V1", ANNOUNCED, PACK_TYPE)
        rig = LiveRig(sim, coord, events, outputs, alarms, journal, vehicle)
        rig.task = task
        yield rig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        port.close()
        journal.close()
        await sim.stop()
