"""Composition root: builds the whole station from its config and runs it.

Nothing else constructs services; rooms get what they need (clock, alarm raiser, state, the
devices they drive) here. Start order = the list below; stop runs in reverse, so slots switch
their outputs off while the Modbus links are still up, and telemetry (last to stop among the
device services) flushes `online: false` after the safety writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from drivers.core.clock import Clock, utc_iso
from drivers.core.log import get_logger
from drivers.modbus.network import ModbusNetwork
from edge.alarms import AlarmCode, AlarmManager
from edge.app.health import LoopMonitor, Notifier, watchdog_interval_s
from edge.app.hub import StationHub
from edge.app.supervisor import Kind, Supervisor, Task
from edge.config import StationConfig
from edge.operator.commands import OutOfService, StationCommands
from edge.operator.ctl import CtlServer
from edge.operator.service import CommandService
from edge.operator.signatures import Verifier, load_keys
from edge.operator.timesync import ClockWatch
from edge.scheduler.core import Allocation, Scheduler, SlotInput
from edge.scheduler.policies import make_policy
from edge.scheduler.service import SchedulerService
from edge.slot.service import SlotService
from edge.state import GridState, StationState
from edge.swap.choice import SlotView, within_handover_window
from edge.swap.inventory import SlotPlace
from edge.swap.messages import PackIdentity
from edge.swap.service import SwapRoom, build_swap
from edge.telemetry.alarm_events import AlarmEvents
from edge.telemetry.models import Details
from edge.telemetry.publisher import StatePublisher
from edge.telemetry.service import Telemetry

log = get_logger("station")


def modbus_service(network: ModbusNetwork, slots: dict[str, SlotService]) -> Task:
    """Every Modbus link and device owner (chargers), as one device service."""

    async def fail_safe() -> None:
        # Its owners stop, so nobody feeds the watchdogs; the restart must not replay the last
        # wanted outputs either (issue 12 item 6).
        for dev in network.devices.values():
            dev.fail_safe()
        for slot in slots.values():
            slot.restart_from_off("charger owner (Modbus network service) failed")

    return Task("modbus", network.run, fail_safe=fail_safe)


class SwapRunner:
    """The swap coordinator (core) with the operator's ctl socket."""

    name = "swap"

    def __init__(self, room: SwapRoom, ctl: CtlServer | None, stop_timeout_s: float) -> None:
        self.room = room
        self.ctl = ctl
        self.stop_timeout_s = stop_timeout_s

    def dock_known_packs(self, slots: dict[str, SlotService]) -> None:
        """Start-up: dock the slots the inventory says hold a pack; with no inventory yet (first
        boot) probe every slot, and a slot whose BMS stays silent is taken as empty."""
        inv = self.room.coordinator.core.inventory
        known = bool(inv.packs())
        # A slot a journalled swap reserved is never docked (energised) at start-up; the swap
        # docks it again when it ends (issue 12 item 3).
        reserved = self.room.coordinator.core.reserved_slots()
        for slot_id, slot in slots.items():
            if slot_id in reserved:
                slot.inhibit("reserved")
            elif not known:
                slot.probe()
            elif inv.at(SlotPlace(slot_id)) is not None:
                slot.dock()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.ctl is not None:
                tg.create_task(self.ctl.serve(), name="ctl")
            tg.create_task(self.room.coordinator.run(), name="swap-coordinator")

    async def stop(self) -> None:
        await self.room.coordinator.shutdown(self.stop_timeout_s)
        if self.ctl is not None:
            await self.ctl.stop()


class SwapBindings:
    """What the swap coordinator asks of the slots, and where its events go."""

    def __init__(
        self,
        slots: dict[str, SlotService],
        alarms: AlarmManager,
        hub: StationHub,
        ready_soc_pct: float,
    ) -> None:
        self.slots = slots
        self.alarms = alarms
        self.hub = hub
        self.ready_soc_pct = ready_soc_pct
        self.events_lost = 0
        self._raiser = alarms.raiser("swap")

    async def output_off(self, slot_id: str) -> None:
        slot = self.slots[slot_id]
        slot.inhibit("reserved")
        await slot.output_off()

    def emergency_off(self) -> None:
        # Output off and held off, watchdogs starved; the packs stay docked (issue 12 item 5).
        # Output held off at zero current, watchdogs starved; the packs stay docked and their
        # sessions up, so charging resumes after a reset (a session that ended meanwhile is
        # started again by the reset).
        for slot in self.slots.values():
            slot.inhibit("estop")

    async def all_outputs_off(self) -> None:
        await asyncio.gather(
            *(s.output_off(undock=False) for s in self.slots.values()), return_exceptions=True
        )

    def emergency_reset(self, occupied: frozenset[str], reserved: frozenset[str]) -> None:
        for slot_id, slot in self.slots.items():
            slot.release("estop")
            if slot_id in reserved:
                continue
            if slot.docked:
                # A session the stop ended starts afresh; a latched slot stays latched (only
                # `reset_slot` clears a slot latch, issue 14).
                slot.resume_charging()
            elif slot_id in occupied:
                slot.dock()

    def set_reserved(self, reserved: frozenset[str], occupied: frozenset[str]) -> None:
        for slot_id, slot in self.slots.items():
            if slot_id in reserved:
                slot.inhibit("reserved")
            elif "reserved" in slot.core.inhibited:
                slot.release("reserved")
                if not slot.docked and slot_id in occupied:
                    slot.dock()

    def slot_views(self) -> list[SlotView]:
        sources = {a.source for a in self.alarms.active}
        return [s.slot_view(s.slot_id in sources, self.ready_soc_pct) for s in self.slots.values()]

    def pack_seated(self, slot_id: str) -> None:
        self.slots[slot_id].dock()  # its session starts

    def pack_removed(self, slot_id: str) -> None:
        pass  # the output-off the step required has undocked it already

    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> None:
        try:
            self.hub.emit_event(event_type, details)
        except (ValueError, KeyError) as e:
            log.warning("swap event not published", type=event_type, error=str(e))
        except Exception as e:  # noqa: BLE001 - a failing sink (full disk) never stops the swap
            self.events_lost += 1
            self._raiser.raise_alarm(AlarmCode.SWAP_EVENT_LOST, "events", f"{event_type}: {e}")
            log.error("swap event lost", type=event_type, error=repr(e))


class TelemetryRunner:
    """The MQTT link. Its stop publishes `online: false` and returns; run() then ends."""

    name = "telemetry"

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._done = asyncio.Event()

    async def run(self) -> None:
        self._done.clear()
        try:
            await self.telemetry.run()
        finally:
            self._done.set()
        # An orderly stop ends run(); stay parked until the supervisor cancels us.
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.telemetry.stop()
        await self._done.wait()


@dataclass(slots=True)
class Station:
    config: StationConfig
    clock: Clock
    alarms: AlarmManager
    state: StationState
    supervisor: Supervisor
    notifier: Notifier
    monitor: LoopMonitor
    network: ModbusNetwork
    slots: dict[str, SlotService]
    scheduler: SchedulerService
    telemetry: Telemetry
    commands: StationCommands
    publisher: StatePublisher
    swap: SwapRoom
    command_service: CommandService

    async def run(self) -> None:
        """Run until `stop()`; raises CoreServiceFailed when a core service fails."""
        task = asyncio.ensure_future(self.supervisor.run(self.config.station.stop_deadline_s))
        started = asyncio.ensure_future(self.supervisor.wait_started())
        try:
            await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                self.notifier.notify("READY=1", f"STATUS={self.state.summary()}")
                log.info(
                    "station ready", station=self.config.station.id, services=self.supervisor.names
                )
            await task
        finally:
            for t in (task, started):
                if not t.done():
                    t.cancel()
            await asyncio.gather(task, started, return_exceptions=True)
            self.telemetry.close()
            self.swap.close()

    def stop(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.supervisor.request_stop()


def build_station(
    config: StationConfig,
    clock: Clock,
    notifier: Notifier | None = None,
    scheduler_clock: Clock | None = None,
) -> Station:
    """Every service, constructed in dependency order with what it needs; the rooms' reports
    upward go through the hub (see edge/app/hub.py), connected once below."""
    config_dir = config.source.parent if config.source is not None else Path.cwd()
    config.station.state_dir.mkdir(parents=True, exist_ok=True)
    alarms = AlarmManager(clock)
    state = StationState(
        station_id=config.station.id,
        grid=GridState(cap_kw=config.grid.cap_kw, limit_kw=config.grid.base_limit_kw),
        alarms=alarms,
    )
    station_raiser = alarms.raiser("station")
    supervisor = Supervisor(clock, station_raiser)
    notifier = notifier or Notifier()
    hub = StationHub()

    def on_lag(lagging: bool, lag_s: float) -> None:
        if lagging:
            station_raiser.raise_alarm(
                "station.loop_lag", "event_loop", f"lag {lag_s * 1000:.0f} ms"
            )
        else:
            station_raiser.clear_alarm("station.loop_lag", "event_loop")

    monitor = LoopMonitor(
        notifier, clock, watchdog_s=watchdog_interval_s(), status=state.summary, on_lag=on_lag
    )

    network = ModbusNetwork(
        list(config.chargers), config_dir=config_dir, clock=clock, alarms=alarms.raiser("modbus")
    )

    slot_raiser = alarms.raiser("slot")
    slots: dict[str, SlotService] = {}
    for i, s in enumerate(config.slots):
        slots[s.id] = SlotService(
            s.id,
            network.devices[s.charger],
            s.bus,
            clock=clock,
            alarms=slot_raiser,
            safety=config.safety,
            on_change=hub.slot_changed,
            events=hub,
            on_identified=hub.pack_identified,
            charger_number=i + 1,
            charging_efficiency=config.grid.pack.charging_efficiency,
        )

    def apply_allocation(alloc: Allocation) -> None:
        for g in alloc.grants:
            slot = slots.get(g.slot_id)
            if slot is not None:
                slot.set_grant(g.power_kw)  # grid-side; the slot converts it (edge.power)
        hub.allocation(alloc)

    def scheduler_inputs() -> list[SlotInput]:
        # The reserve counts only packs the swap could hand over (temperature, health); the
        # window is the swap room's, read when the scheduler runs (the room is built below).
        window = room.graph.model.pack_choice
        return [
            replace(s.slot_input(), handover_ok=within_handover_window(s.slot_view(False), window))
            for s in slots.values()
        ]

    scheduler = SchedulerService(
        Scheduler(config.grid, make_policy(config.grid.policy)),
        scheduler_clock or clock,  # the demo's world clock: plans in world time
        scheduler_inputs,
        apply_allocation,
    )

    bindings = SwapBindings(slots, alarms, hub, config.grid.ready_soc_pct)
    room = build_swap(
        config,
        clock=clock,
        outputs=bindings,
        slots=bindings,
        events=bindings,
        alarms=alarms.raiser("swap"),
        on_request=scheduler.vehicle_request,  # arrivals and waiting vehicles
        on_status=hub.robot_changed,  # telemetry/robot follows every PLC status poll
    )

    commands = StationCommands(
        state,
        clock,
        OutOfService(config.station.state_dir / "slots-out-of-service.json"),
        scheduler=scheduler,
        slots=slots,
        swap=room.coordinator,
        outbound=hub,
    )
    keys = load_keys(list(config.commands.keys), config_dir)
    command_service = CommandService(
        config.commands,
        commands,
        clock=clock,
        verifier=Verifier(config.station.id, keys) if keys else None,
        timeout_s=config.telemetry.command_timeout_s,
        max_power_lease_s=config.telemetry.max_power_lease_s,
    )
    ctl = CtlServer(config.station.ctl_socket, command_service, group=config.station.ctl_group)
    telemetry = Telemetry(
        config.station.id,
        config.mqtt,
        config.telemetry,
        command_service,
        clock=clock,
        alarms=alarms.raiser("telemetry"),
        commands=config.commands,
    )
    AlarmEvents(alarms, telemetry)
    publisher = StatePublisher(
        config, state, telemetry, clock, slots=slots, scheduler=scheduler, robot=room.coordinator
    )

    pending: set[asyncio.Future[None]] = set()

    def identified(slot_id: str, pack_id: str, pack_type: str) -> None:
        task = asyncio.ensure_future(
            room.coordinator.pack_docked(slot_id, PackIdentity(pack_id, pack_type or None))
        )
        pending.add(task)
        task.add_done_callback(pending.discard)

    hub.connect(publisher, identified)

    # Start-up state, now that every report has somewhere to go.
    commands.apply_out_of_service()
    swap_runner = SwapRunner(room, ctl, min(2.0, config.station.stop_deadline_s / 2))
    swap_runner.dock_known_packs(slots)

    supervisor.add(Task("health", monitor.run), Kind.CORE)
    supervisor.add(ClockWatch(station_raiser, clock), Kind.DEVICE)  # clock.unsynchronised
    supervisor.add(modbus_service(network, slots), Kind.DEVICE)
    supervisor.add(TelemetryRunner(telemetry), Kind.DEVICE)
    supervisor.add(Task("scheduler", scheduler.run), Kind.CORE)
    supervisor.add(publisher, Kind.CORE)
    supervisor.add(swap_runner, Kind.CORE)
    for slot in slots.values():
        supervisor.add(slot, Kind.DEVICE)
    log.debug(
        "built", slots=len(slots), chargers=len(network.devices), started=utc_iso(clock.now())
    )
    return Station(
        config,
        clock,
        alarms,
        state,
        supervisor,
        notifier,
        monitor,
        network,
        slots,
        scheduler,
        telemetry,
        commands,
        publisher,
        room,
        command_service,
    )
