"""The swap coordinator: the service around the sans-I/O sequence.

It polls the robot PLC (fast while a swap runs, slowly otherwise), feeds the sequence, and
executes its actions: journal first (one commit per core step, on disk before any command),
then PLC writes through a `RobotPort`, slot-output requests, events and alarms. Operator and
remote commands enter through `execute()` (the ctl socket and MQTT use the same entry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from drivers.core.alarm_sink import AlarmSink, ClearAlarm, RaiseAlarm, carry_out
from drivers.core.clock import Clock, utc_iso
from drivers.core.log import get_logger
from drivers.robot.port import RobotPort, RobotPortError
from edge.events import EventSink
from edge.swap.choice import SlotView
from edge.swap.inventory import SlotPlace, parse_place
from edge.swap.journal import Journal, JournalError
from edge.swap.messages import (
    Action,
    CommandStep,
    CorrectInventory,
    Emit,
    Event,
    JournalWrite,
    Manual,
    PackDocked,
    PackIdentity,
    PackRemoved,
    PackSeated,
    PlcOffline,
    PlcStatus,
    RefitOriginal,
    Rejected,
    ReleaseOutputs,
    RequestAllOutputsOff,
    RequestOutputOff,
    ResetFault,
    RetryStep,
    SetHalt,
    SlotOutputFailed,
    SlotOutputOff,
    StartSwap,
)
from edge.swap.model import Mode
from edge.swap.sequence import SwapSequence
from edge.swap.snapshot import restore, take
from edge.swap.status import status_view
from edge.swap.steps import StepGraph

log = get_logger("swap")


class SlotOutputs(Protocol):
    async def output_off(self, slot_id: str) -> None:
        """Return once the slot's charger output is confirmed off; raise if it cannot be."""
        ...

    async def all_outputs_off(self) -> None:
        """Emergency stop: return once every charger output is confirmed off."""
        ...

    def emergency_off(self) -> None:
        """Emergency stop, at once and before anything is written to disk: every output
        commanded off and held off, every charger watchdog starved; no slot is undocked."""
        ...

    def emergency_reset(self, occupied: frozenset[str], reserved: frozenset[str]) -> None:
        """The latch was reset with the chain healthy: release the hold, dock again the slots
        the inventory says hold a pack (except those a swap reserved) and let them charge."""
        ...

    def set_reserved(self, reserved: frozenset[str], occupied: frozenset[str]) -> None:
        """The slots a swap uses now: never energised; a released one that holds a pack is
        docked (again)."""
        ...

    def pack_seated(self, slot_id: str) -> None:
        """The robot put a pack into this slot: dock it (its session starts)."""
        ...

    def pack_removed(self, slot_id: str) -> None:
        """The robot took the pack out of this slot (its output was confirmed off first)."""
        ...


class SlotViews(Protocol):
    def slot_views(self) -> list[SlotView]:
        """What each slot controller knows now (pack, SOC, session, output, alarms)."""
        ...


def _str_param(params: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    v = params.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise Rejected(f"{name}: a non-empty string is required", "invalid_params")
    return v


class SwapCoordinator:
    def __init__(
        self,
        *,
        graph: StepGraph,
        slot_numbers: Mapping[str, int],
        port: RobotPort,
        journal: Journal,
        clock: Clock,
        outputs: SlotOutputs,
        slots: SlotViews,
        events: EventSink,
        alarms: AlarmSink,
        on_request: Callable[[str, str | None], None] | None = None,
        on_status: Callable[[], None] | None = None,
        poll_active_s: float = 0.02,
        poll_idle_s: float = 0.25,
        offline_after: int = 3,
    ) -> None:
        self.graph = graph
        self.port = port
        self.journal = journal
        self.clock = clock
        self.outputs = outputs
        self.slots = slots
        self.events = events
        self.alarms = alarms
        self.poll_active_s = poll_active_s
        self.poll_idle_s = poll_idle_s
        self.offline_after = offline_after
        snap = journal.snapshot()
        self.restored = snap is not None
        try:
            self.core = (
                restore(graph, slot_numbers, snap)
                if snap is not None
                else SwapSequence(graph, slot_numbers)
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            # A snapshot that decodes but does not fit the sequence: as corrupt as a bad page.
            raise JournalError(f"{journal.path}: snapshot does not restore: {e!r}") from e
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures = 0
        self.polls = 0
        self.changed = asyncio.Event()  # set after every executed batch (tests, live views)
        self.online = asyncio.Event()  # set while the PLC answers
        # Told of every swap request (vehicle id, refusal or None): the scheduler's demand.
        self.on_request = on_request
        # Told after every status poll (telemetry/robot follows the PLC).
        self.on_status = on_status
        self._reserved: frozenset[str] = frozenset()

    # ----- the service task

    async def run(self) -> None:
        try:
            async with self._lock:
                await self._execute(self.core.resume(self.clock.monotonic()))
            while True:
                await self._poll_once()
                period = self.poll_active_s if self._active() else self.poll_idle_s
                self._wake.clear()
                try:
                    async with asyncio.timeout(period):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _active(self) -> bool:
        return self.core.swap is not None and self.core.mode == Mode.RUNNING

    async def _poll_once(self) -> None:
        self.polls += 1
        try:
            st = await self.port.read_status()
        except RobotPortError as e:
            self._failures += 1
            if self._failures >= self.offline_after:
                self.online.clear()
                await self.feed(PlcOffline(str(e)))
        else:
            self._failures = 0
            await self.feed(PlcStatus(st))
            self.online.set()
        async with self._lock:
            await self._execute(self.core.tick(self.clock.monotonic()))
        if self.on_status is not None:
            self.on_status()

    async def feed(self, event: Event) -> list[Action]:
        """Hand one event to the sequence and carry out its actions. Raises Rejected."""
        async with self._lock:
            actions = self.core.handle(event, self.clock.monotonic())
            await self._execute(actions)
            return actions

    async def safety_first(self, actions: list[Action]) -> set[int]:
        """Seam (issue 12 item 5): halts and the e-stop's all-outputs-off go out before the
        journal is written (a stalled or failed disk must not delay or drop them). Returns the
        indexes of the actions already carried out."""
        done: set[int] = set()
        for i, a in enumerate(actions):
            if isinstance(a, RequestAllOutputsOff):
                self.outputs.emergency_off()
            elif isinstance(a, SetHalt) and a.units:
                done.add(i)
                try:
                    await self.port.set_halt(a.units)
                except RobotPortError as e:
                    log.warning("halt %s not written: %s", sorted(a.units), e)
        return done

    def _occupied(self) -> frozenset[str]:
        inv = self.core.inventory
        return frozenset(s for s in self.core.slot_numbers if inv.at(SlotPlace(s)) is not None)

    async def _execute(self, actions: list[Action]) -> None:
        early = await self.safety_first(actions)
        records = [a.record for a in actions if isinstance(a, JournalWrite)]
        if records:
            # Intent on disk before the command it causes; a failed write stops the service.
            # The fsync runs in a thread so the loop's protocol timers (CAN 50 ms) do not wait.
            await asyncio.to_thread(
                self.journal.commit, utc_iso(self.clock.now()), records, take(self.core)
            )
        for i, a in enumerate(actions):
            if i in early:
                continue
            match a:
                case CommandStep():
                    try:
                        await self.port.command(a.unit, a.step_code, a.arg, a.seq)
                    except RobotPortError as e:
                        # the core resends the same seq while the PLC has not acknowledged it
                        log.warning("command not written", step=a.step_id, seq=a.seq, error=str(e))
                case SetHalt():
                    try:
                        await self.port.set_halt(a.units)
                    except RobotPortError as e:
                        log.warning("halt not written", units=sorted(a.units), error=str(e))
                case RequestOutputOff():
                    self._spawn(self._output_off(a.slot_id), f"swap-output-off-{a.slot_id}")
                case RequestAllOutputsOff():
                    self._spawn(self._all_off(), "swap-all-outputs-off")
                case ReleaseOutputs():
                    self.outputs.emergency_reset(self._occupied(), self.core.reserved_slots())
                case PackSeated():
                    self.outputs.pack_seated(a.slot_id)
                case PackRemoved():
                    self.outputs.pack_removed(a.slot_id)
                case Emit():
                    self.events.emit_event(a.type, a.details)
                case RaiseAlarm() | ClearAlarm():
                    carry_out(self.alarms, a)
                case JournalWrite():
                    pass
        reserved = self.core.reserved_slots()
        if reserved != self._reserved:
            self._reserved = reserved
            self.outputs.set_reserved(reserved, self._occupied())
        if actions:
            self.changed.set()
            self._wake.set()

    def _spawn(self, coro: Any, name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _output_off(self, slot_id: str) -> None:
        try:
            await self.outputs.output_off(slot_id)
        except Exception as e:  # noqa: BLE001 - any failure keeps the step blocked
            log.warning("output off not confirmed", slot=slot_id, error=str(e))
            await self.feed(SlotOutputFailed(slot_id, str(e)))
        else:
            await self.feed(SlotOutputOff(slot_id))

    async def _all_off(self) -> None:
        try:
            await self.outputs.all_outputs_off()
        except Exception:  # noqa: BLE001 - logged; the chargers' own watchdogs remain
            log.exception("emergency stop: switching every output off failed")

    async def shutdown(self, timeout_s: float = 1.0) -> bool:
        """Safe stop: halt both units within `timeout_s` (the PLC may not answer). A swap that
        was running is held after the restart (its step reports the halt as a fault)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.port.set_halt(frozenset({"vehicle", "rack"}))
        except (TimeoutError, RobotPortError) as e:
            log.warning("robot halt at shutdown not confirmed", error=str(e))
            return False
        return True

    # ----- entries for the station, ctl and MQTT

    async def start_swap(
        self, vehicle_id: str, pack_type: str, announced_pack_id: str
    ) -> dict[str, Any]:
        """Start a swap; raises Rejected (with the reason) before any motion."""
        views = tuple(self.slots.slot_views())
        try:
            await self.feed(StartSwap(vehicle_id, pack_type, announced_pack_id, views))
        except Rejected as e:
            self._requested(vehicle_id, str(e))
            raise
        self._requested(vehicle_id, None)
        sw = self.core.swap
        assert sw is not None
        return {
            "swap_id": sw.swap_id,
            "full_pack_id": sw.full_pack_id,
            "full_slot": sw.full_slot,
            "store_slot": sw.store_slot,
        }

    def _requested(self, vehicle_id: str, refused: str | None) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(vehicle_id, refused)
        except Exception as e:  # noqa: BLE001 - a listener's bug must not refuse a swap
            log.warning("swap request listener failed", error=repr(e))

    async def pack_docked(self, slot_id: str, identity: PackIdentity) -> None:
        """A slot read the docked pack's identity (GB/T 27930 BRM)."""
        await self.feed(PackDocked(slot_id, identity))

    def status(self) -> dict[str, Any]:
        return status_view(self.core)

    def _check_swap_id(self, params: Mapping[str, Any]) -> None:
        """A recovery naming a swap acts only on that swap (a stale remote command must not
        act on the next one)."""
        want = _str_param(params, "swap_id", optional=True)
        sw = self.core.swap
        if want is not None and (sw is None or sw.swap_id != want):
            raise Rejected(f"{want} is not the current swap ({sw.swap_id if sw else 'none'})")

    async def execute(self, command: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One operator/remote command. Raises Rejected(code, message) when refused."""
        if command == "status":
            return self.status()
        if command == "start_swap":
            return await self.start_swap(
                _str_param(params, "vehicle_id") or "",
                _str_param(params, "pack_type") or "",
                _str_param(params, "announced_pack_id") or "",
            )
        if command == "reset_fault":
            await self.feed(ResetFault())
        elif command == "retry_step":
            self._check_swap_id(params)
            await self.feed(RetryStep())
        elif command == "refit_original":
            self._check_swap_id(params)
            await self.feed(RefitOriginal())
        elif command == "manual":
            self._check_swap_id(params)
            enabled = params.get("enabled", True)
            if not isinstance(enabled, bool):
                raise Rejected(
                    "enabled: true (hand over) or false (end manual mode)", "invalid_params"
                )
            await self.feed(Manual(end=not enabled))
        elif command == "inventory_set":
            place = _str_param(params, "place", optional=True)
            try:
                parsed = None if place is None else parse_place(place)
            except ValueError as e:
                raise Rejected(str(e), "invalid_params") from None
            await self.feed(
                CorrectInventory(
                    _str_param(params, "pack_id") or "",
                    parsed,
                    _str_param(params, "pack_type", optional=True),
                )
            )
        else:
            raise Rejected(f"unknown command {command!r}", "unknown_command")
        return self.status()
