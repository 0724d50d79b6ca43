"""One rack slot as a service: binds the slot's GB/T 27930 link (CAN) and its charger (Modbus)
to the pure slot core, and carries out the core's actions.

The core decides (setpoints, safety reactions); this service only moves data: charger
snapshots and session events in, Modbus writes, watchdog feeding, CAN commands and alarms out.
Writes go through one writer task that always applies the latest wanted output, output-off
first, so a safety stop never waits behind an older setpoint. A request counts as done only once
every write of it went through; a failed one is retried with a short backoff.

Output off is a held state (issue 12): once off is wanted it stays wanted until a good read taken
after the off command shows the map's off indication and at most 5 A; until then the off is
written again with backoff, the charger's watchdog is starved (it switches itself off) and
`charger.output_off_unconfirmed` stays raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.can.config import CanBusConfig
from drivers.can.events import (
    ACTIVE_PHASES,
    PackIdentified,
    Phase,
    PhaseChanged,
    SessionEvent,
    SessionStopped,
    StopReason,
    Timeout,
)
from drivers.can.runner import ChargerLink
from drivers.can.session import ChargerLimits, PackFieldLimits, SessionTimers
from drivers.core.alarm_sink import AlarmSink, ClearAlarm, RaiseAlarm, carry_out
from drivers.core.backoff import Backoff
from drivers.core.clock import Clock
from drivers.core.log import get_logger
from drivers.core.quality import Quality
from drivers.modbus.charger import ChargerControl
from drivers.modbus.device import DeviceState, ModbusDevice, Snapshot
from drivers.modbus.errors import ModbusError
from edge.alarms import AlarmCode
from edge.events import EventSink
from edge.power import to_grid_side, to_pack_side
from edge.scheduler.core import SlotInput
from edge.slot.config import SafetyConfig
from edge.slot.core import (
    Action,
    BeginSession,
    ChargerRatings,
    ChargerReading,
    FeedWatchdog,
    PackSnapshot,
    SessionCommand,
    SessionCommandKind,
    SetChargerOutput,
    SlotCore,
    SlotState,
)
from edge.swap.choice import SlotView
from edge.telemetry.models import ChargeStarted, ChargeStopped, Details, EventType

log = get_logger("slot")
# Session phases in which the BMS may have closed its contactors (after BCP/BRO).
_BMS_ENGAGED = frozenset({Phase.PARAMETERS, Phase.CHARGING, Phase.STOPPING})
_SESSION_OVER = frozenset({Phase.IDLE, Phase.ENDED, Phase.FAILED})
# A new session would clear these latches (core.start), so none is begun again here: a pack
# fault stays until another pack is docked, a BMS-lost latch until `reset_slot`.
_LATCHED = frozenset({SlotState.FAULTED, SlotState.UNAVAILABLE})

# The charger's `state` enum labels that mean its output is live, and those that mean it is off.
_LIVE_STATES = frozenset({"charging", "derating", "on"})
_OFF_STATES = frozenset({"off", "standby"})
OFF_CURRENT_A = 5.0  # at most this much output current counts as "off"
_DEFAULT_RATINGS = ChargerRatings(
    max_voltage_v=750.0, min_voltage_v=200.0, max_current_a=0.0, max_power_kw=0.0
)


def _number(snap: Snapshot, name: str, good_only: bool = True) -> float | None:
    """A numeric point of the charger's snapshot; None when absent (or, by default, not good)."""
    pv = snap.points.get(name)
    if pv is None or (good_only and pv.quality is not Quality.GOOD):
        return None
    v = pv.value
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


@dataclass(slots=True)
class _Wanted:
    out: SetChargerOutput
    version: int


class SlotService:
    """Runs one slot. `dock()`/`undock()` come from the swap coordinator (or start-up inventory),
    `set_grant()` from the scheduler."""

    def __init__(
        self,
        slot_id: str,
        charger: ModbusDevice,
        bus: CanBusConfig,
        *,
        clock: Clock,
        alarms: AlarmSink,
        safety: SafetyConfig | None = None,
        on_change: Callable[[str], None] | None = None,
        events: EventSink | None = None,
        on_identified: Callable[[str, str, str], None] | None = None,
        charger_number: int = 1,
        charging_efficiency: float = 0.95,
    ) -> None:
        self.slot_id = slot_id
        self.charging_efficiency = charging_efficiency
        self.charger = charger
        self.control = ChargerControl.of(charger.map)
        self._clock = clock
        self._alarms = alarms
        self._on_change = on_change or (lambda _s: None)
        self._events = events
        sf = safety or SafetyConfig()
        self.core = SlotCore(slot_id, _DEFAULT_RATINGS, sf)
        self.link = ChargerLink(
            slot_id,
            bus,
            ChargerLimits(_DEFAULT_RATINGS.max_voltage_v, _DEFAULT_RATINGS.min_voltage_v, 0.0),
            self._session_event,
            alarms=None,
            clock=clock,
            charger_number=charger_number,
            timers=SessionTimers(
                bcl_timeout_s=sf.bms_timeout_s, max_rehandshakes=sf.max_rehandshakes
            ),
            # Range checks where the BMS's values enter (the session): the same window as the core.
            field_limits=PackFieldLimits(
                max_temperature_c=sf.max_pack_temp_c,
                min_temperature_c=sf.min_pack_temp_c,
                max_cell_voltage_v=sf.max_cell_voltage_v,
                cell_voltage_margin_v=sf.cell_voltage_margin_v,
            ),
        )
        self.docked = False
        self.docked_at_s = 0.0
        # Probing: a first-boot slot whose occupancy is unknown; no answer means empty, no alarm.
        self.probing = False
        self.on_identified = on_identified
        self._started = False
        # An operator took the slot out of service: output off, no session, no pack in or out.
        self.in_service = True
        self._wanted: _Wanted | None = None
        self._wake = asyncio.Event()
        self._version = 0
        self.writes_failed = 0
        self.ratings_known = asyncio.Event()
        self.capacity_kwh = 70.0
        # the held off: when the current off command started (reads before it never count),
        # whether a read after it confirmed the output off, and why the watchdog is starved
        self._off_since: float | None = None
        self._off_confirmed = False
        self._starve: set[str] = set()
        self.off_retry_initial_s = 0.1
        self.off_retry_max_s = 1.0
        self.events_lost = 0
        self._failed = False  # the last run() failed: the next one starts from "off"
        self._resume_pending = False  # an e-stop reset waits for the stopped session to end

    @property
    def name(self) -> str:
        return f"slot-{self.slot_id}"

    # ---- commands from the station ------------------------------------------------------
    def dock(self) -> None:
        """A pack is seated in the slot's connector: start its session once ratings are known."""
        self.docked = True
        self.docked_at_s = self._clock.monotonic()
        if self.ratings_known.is_set():
            self._start_session()
        self._on_change(self.slot_id)

    def probe(self) -> None:
        """Find out whether a pack is seated (first boot, empty inventory): dock and listen."""
        self.probing = True
        self.dock()

    def pack_type(self) -> str | None:
        ident = self.core.snapshot(self._clock.monotonic()).identity
        return ident.pack_type if ident else None

    def undock(self) -> None:
        """The pack is about to leave: session stopped, output off, the slot counts as empty.
        (Output off alone is `stop_output`; an e-stop does not undock.)"""
        self._apply(self.core.stop(self._clock.monotonic(), StopReason.MANUAL))
        self.docked = False
        self._started = False
        self._on_change(self.slot_id)

    def inhibit(self, reason: str) -> None:
        """Hold the output off for `reason` ("reserved" by a swap, "estop") until `release`."""
        self._apply(self.core.inhibit(reason, self._clock.monotonic()))
        if reason == "estop":
            self._starve_watchdog("estop")

    def release(self, reason: str) -> None:
        self._apply(self.core.release(reason, self._clock.monotonic()))
        if reason == "estop":
            self._feed_again("estop")

    def resume_charging(self) -> None:
        """After an e-stop reset: a docked slot whose session has ended starts a new one (one
        still ending starts it when it has ended)."""
        self._begin_again()

    def _begin_again(self) -> None:
        """A docked pack gets a new session: at once when its last one is over, or as soon as
        a stopping one has ended (a CHM in the middle of a stop would abandon it). A session
        that is still up is left alone."""
        self._resume_pending = (
            self.docked
            and self.in_service
            and self.core.state not in _LATCHED
            and self.core.phase not in ACTIVE_PHASES
        )
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if not self._resume_pending:
            return
        if self.core.phase in ACTIVE_PHASES or not (self.docked and self.in_service):
            self._resume_pending = False  # up again by itself (re-handshake), or gone
        elif self.core.phase in _SESSION_OVER and self.core.state not in _LATCHED:
            self._resume_pending = False
            self._started = False
            if self.ratings_known.is_set():  # else the first reading of the ratings starts it
                self._start_session()

    def set_grant(self, grid_kw: float) -> None:
        """The scheduler's grant (grid-side); the slot limits what reaches the pack."""
        pack_kw = to_pack_side(grid_kw, self.charging_efficiency)
        self._apply(self.core.set_grant(pack_kw, self._clock.monotonic()))

    def set_derating(self, factor: float) -> None:
        self._apply(self.core.set_derating(factor, self._clock.monotonic()))

    def reset(self) -> None:
        """Operator reset of a latched slot (after re-plugging the pack): a docked pack starts
        a new session."""
        self._apply(self.core.reset_unavailable(self._clock.monotonic()))
        self._begin_again()

    def set_in_service(self, in_service: bool) -> None:
        """Out of service: output off and CST now, no new session; back: a seated pack
        starts a new session (once the stopped one has ended)."""
        if in_service == self.in_service:
            return
        self.in_service = in_service
        if not in_service:
            self._resume_pending = False
            self.stop_output()
            self._started = False
        else:
            self._begin_again()
        self._on_change(self.slot_id)

    def stop_output(self, reason: StopReason = StopReason.MANUAL) -> None:
        """Emergency stop or shutdown: output off and CST, at once."""
        self._apply(self.core.stop(self._clock.monotonic(), reason))

    # ---- what others read ---------------------------------------------------------------
    def snapshot(self) -> PackSnapshot:
        return self.core.snapshot(self._clock.monotonic())

    def slot_view(self, alarm_active: bool, ready_soc_pct: float = 90.0) -> SlotView:
        s = self.snapshot()
        # A pack already at the hand-over SOC counts as done: choosing it stops its session
        # (output_off) before the robot touches it, as for any other pack.
        idle = (
            s.state is not SlotState.CHARGING
            or abs(s.current_a or 0.0) < 1.0
            or (s.soc_pct or 0.0) >= ready_soc_pct
        )
        return SlotView(
            slot_id=self.slot_id,
            pack_id=s.pack_id if self.docked else None,
            pack_type=self.pack_type() if self.docked else None,
            soc_pct=s.soc_pct or 0.0,
            temperature_c=float(s.max_temperature_c) if s.max_temperature_c is not None else 25.0,
            cycles=(s.identity.cycle_count or 0) if s.identity else 0,
            session_ended=idle,
            # For a pack at the hand-over SOC this says "can be switched off": the swap asks for
            # output off at its start and the fetch step waits for the charger's confirmation.
            output_off=idle or not (self.core.reading.output_on if self.core.reading else False),
            alarm_active=alarm_active,
            available=s.state is not SlotState.UNAVAILABLE and self.in_service,
            reported=not self.probing,
        )

    async def output_off(self, timeout_s: float = 5.0, *, undock: bool = True) -> None:
        """Undock (stop the session) unless told not to, command the output off afresh and
        return once a read taken after that command confirms it and the GB/T stop exchange is
        over (a pack may then leave or enter). Raises TimeoutError; the off stays wanted and
        retried either way."""
        # A BMS past its parameters may have closed its contactors: wait for its BST/BSD after
        # our CST (GB/T 27930 phase 6: the charger unlocks only after the end; a conformance
        # BMS caught packs pulled 2 ms after CST). An empty slot's CHM gets no answer to wait on.
        bms_engaged = self.link.session.phase in _BMS_ENGAGED
        if undock:
            self.undock()
        self._command_off()
        async with asyncio.timeout(timeout_s):
            while not self.output_off_confirmed or (
                bms_engaged and self.link.session.phase is Phase.STOPPING
            ):
                await self.charger.next_update()

    @property
    def output_off_confirmed(self) -> bool:
        """Off is wanted and a good read taken after the off command confirmed it."""
        w = self._wanted
        return w is not None and not w.out.enable and self._off_confirmed

    def off_confirmed_by(self, snap: Snapshot, since: float) -> bool:
        """Seam (issue 12 item 1): does this snapshot confirm the output off? Only good values
        read at or after `since` (the off command) count: output current at most 5 A and the
        map's off indication (enable read false; with no enable point, the current-limit
        read-back at 0 or an off state)."""
        if snap.state is not DeviceState.ONLINE:
            return False

        def fresh(name: str) -> Any:
            pv = snap.points.get(name)
            if pv is None or pv.quality is not Quality.GOOD or pv.read_at is None:
                return None
            return pv.value if pv.read_at >= since else None

        current = fresh("output_current_a")
        if not isinstance(current, int | float) or abs(float(current)) > OFF_CURRENT_A:
            return False
        en = self.charger.map.points.get("enable")
        if en is not None and (en.access != "w" or en.readback is not None):
            return fresh("enable") is False  # a readable enable is the off indication
        limit = fresh(self.control.limit_point)
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit == 0:
            return True
        state = fresh("state")
        return state is not None and str(state) in _OFF_STATES

    def slot_input(self) -> SlotInput:
        """What the scheduler allocates from (it reads every slot at each allocation)."""
        s = self.snapshot()
        self.core.scheduled_request_kw = self.core.request_kw()
        r = self.core.ratings
        eff = self.charging_efficiency
        # The request and the rating are pack-side; the scheduler works grid-side (edge.power).
        return SlotInput(
            slot_id=self.slot_id,
            soc_pct=s.soc_pct if self.docked else None,
            bms_limit_kw=to_grid_side(self.core.request_kw(), eff),
            charger_rating_kw=to_grid_side(r.max_power_kw, eff),
            derate_factor=self.core.derating,
            faulted=s.state in (SlotState.FAULTED, SlotState.UNAVAILABLE) or not self.in_service,
            docked_at_s=self.docked_at_s,
            capacity_kwh=self.capacity_kwh,
        )

    # ---- the service --------------------------------------------------------------------
    async def run(self) -> None:
        self.start_from_off()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.link.run(), name=f"slot-{self.slot_id}-can")
                tg.create_task(self._follow_charger(), name=f"slot-{self.slot_id}-charger")
                tg.create_task(self._writer(), name=f"slot-{self.slot_id}-writer")
        except Exception:
            self._failed = True
            raise

    def start_from_off(self) -> None:
        """Seam (issue 12 item 6): every run begins from "off", never from the last wanted
        setpoint; after a failure the session is stopped and started afresh."""
        now = self._clock.monotonic()
        if self._failed:
            self._failed = False
            if self._started:
                self._apply(self.core.stop(now, StopReason.CHARGER_FAULT))
                self._started = False
        self._apply(self.core.force_off(now))
        self._command_off()
        if self.docked and self.ratings_known.is_set():
            self._start_session()

    def restart_from_off(self, why: str) -> None:
        """The charger's owner failed (nothing feeds it now): hold the output off and unfed
        until a read after a new off command confirms it; only then may regulation resume."""
        self.off_unconfirmed(why)
        self._apply(self.core.inhibit("restart", self._clock.monotonic()))
        self._command_off()

    async def fail_safe(self, timeout_s: float = 0.5) -> None:
        """Seam (issue 12 item 6): the service failed. Before the supervisor's backoff: starve
        the charger's watchdog (it switches itself off) and try, bounded, to write it off."""
        self._failed = True
        self._starve_watchdog("off")
        self._alarms.raise_alarm(
            AlarmCode.CHARGER_OUTPUT_OFF_UNCONFIRMED, self.slot_id, "slot service failed"
        )
        try:
            async with asyncio.timeout(timeout_s):
                await self.write_output(SetChargerOutput(0.0, 0.0, False))
        except (ModbusError, TimeoutError) as e:
            log.warning("output-off write failed after a crash", slot=self.slot_id, error=str(e))

    async def stop(self) -> None:
        """Safe stop: output off (verified writes, bounded by the supervisor's deadline), CST."""
        self.stop_output(StopReason.MANUAL)
        try:
            await self.write_output(SetChargerOutput(0.0, 0.0, False))
        except ModbusError as e:
            # Unreachable: its watchdog switches it off since we stop feeding it.
            self.charger.stop_watchdog()
            log.warning(
                "output-off write failed at stop; watchdog left unfed",
                slot=self.slot_id,
                error=str(e),
            )

    # ---- internals ----------------------------------------------------------------------
    def _start_session(self) -> None:
        if not self._started and self.in_service:
            self._started = True
            self._apply(self.core.start(self._clock.monotonic()))

    def _reading(self, snap: Snapshot) -> ChargerReading:
        def num(name: str) -> float:
            return _number(snap, name, good_only=False) or 0.0

        qualities = [
            snap.points[n].quality
            for n in ("output_voltage_v", "output_current_a", "state")
            if n in snap.points
        ]
        if all(q is Quality.GOOD for q in qualities):
            quality = Quality.GOOD
        elif any(q is Quality.INVALID for q in qualities):
            quality = Quality.INVALID
        else:
            quality = Quality.STALE
        state_pv = snap.points.get("state")
        state = str(state_pv.value) if state_pv is not None and state_pv.value is not None else ""
        current = num("output_current_a")
        # A fault-code register (drivers.modbus fault_codes) reports the active faults.
        code_pv = snap.points.get("fault_code")
        coded = bool(code_pv.value) if code_pv is not None and code_pv.good else False
        return ChargerReading(
            voltage_v=num("output_voltage_v"),
            current_a=current,
            output_on=state in _LIVE_STATES or current > 1.0,
            quality=quality,
            fault=state == "fault" or coded,
        )

    def charger_state(self) -> str:
        snap = self.charger.snapshot()
        if snap.state is not DeviceState.ONLINE:
            return str(snap.state)
        pv = snap.points.get("state")
        return str(pv.value) if pv is not None and pv.value is not None else "unknown"

    async def _follow_charger(self) -> None:
        online = True
        async for snap in self.charger.updates():
            now = self._clock.monotonic()
            is_online = snap.state in (
                DeviceState.ONLINE,
                DeviceState.RESTORING,
                DeviceState.DEGRADED,
            )
            if is_online != online:
                online = is_online
                self._apply(self.core.set_charger_online(online, now))
            if snap.state is DeviceState.ONLINE:
                self._update_ratings(snap, now)
                self._apply(self.core.on_reading(self._reading(snap), now))
                self._apply(self.core.tick(now))
            self._check_off(snap)
            self._on_change(self.slot_id)

    def _check_off(self, snap: Snapshot) -> None:
        w, since = self._wanted, self._off_since
        if w is None or w.out.enable or self._off_confirmed or since is None:
            return
        if self.off_confirmed_by(snap, since):
            self._off_confirmed = True
            self._alarms.clear_alarm(AlarmCode.CHARGER_OUTPUT_OFF_UNCONFIRMED, self.slot_id)
            self._feed_again("off")
            self._wake.set()
            if "restart" in self.core.inhibited:
                self._apply(self.core.release("restart", self._clock.monotonic()))

    def _update_ratings(self, snap: Snapshot, now: float) -> None:
        rated = [_number(snap, n) for n in ("max_voltage_v", "max_current_a", "max_power_kw")]
        if rated[0] is None or rated[1] is None or rated[2] is None:
            return  # not read (or not good) yet: keep what we have
        ratings = ChargerRatings(
            max_voltage_v=rated[0],
            min_voltage_v=_DEFAULT_RATINGS.min_voltage_v,
            max_current_a=rated[1],
            max_power_kw=rated[2],
        )
        if ratings != self.core.ratings:
            self._apply(self.core.set_ratings(ratings, now))
        if not self.ratings_known.is_set():
            self.ratings_known.set()
            if self.docked:
                self._start_session()

    def _session_event(self, ev: SessionEvent) -> None:
        now = self._clock.monotonic()
        before = self.core.state
        if self.probing and isinstance(ev, Timeout) and self.core.snapshot(now).identity is None:
            # Nobody answered the first handshake: the slot is empty. Not a fault.
            self.probing = False
            self.undock()
            self._apply(self.core.reset_unavailable(now))
            for code in ("pack.bms_timeout", "slot.unavailable"):
                self._alarms.clear_alarm(code, self.slot_id)
            log.info("slot empty at start-up", slot=self.slot_id)
            return
        self._apply(self.core.on_session_event(ev, now))
        if isinstance(ev, PhaseChanged):
            self._maybe_resume()
        snap = self.snapshot()
        if isinstance(ev, PackIdentified):
            self.probing = False
            if self.on_identified is not None:
                self.on_identified(self.slot_id, ev.pack_id, self.pack_type() or "")
        if (
            isinstance(ev, PhaseChanged)
            and self.core.state is SlotState.CHARGING
            and before is not SlotState.CHARGING
        ):
            self._emit(
                EventType.CHARGE_STARTED, ChargeStarted(slot_id=self.slot_id, pack_id=snap.pack_id)
            )
        if isinstance(ev, SessionStopped):
            self._emit(
                EventType.CHARGE_STOPPED,
                ChargeStopped(
                    slot_id=self.slot_id,
                    pack_id=snap.pack_id,
                    reason=str(ev.reason),
                    # the session's own count (reset when the next one starts)
                    energy_kwh=round(self.link.session.energy_kwh, 3),
                ),
            )
        self._on_change(self.slot_id)

    def _emit(self, type_: EventType, details: Details) -> None:
        """Seam (issue 12 item 6): an event sink that fails (a full or unwritable disk) never
        stops the slot: the event is counted as lost and alarmed."""
        if self._events is None:
            return
        try:
            self._events.emit_event(type_, details)
        except Exception as e:  # noqa: BLE001 - whatever the sink raises, the slot goes on
            self.events_lost += 1
            self._alarms.raise_alarm(AlarmCode.SLOT_EVENT_LOST, self.slot_id, f"{type_}: {e}")
            log.error("event lost", slot=self.slot_id, type=type_, error=repr(e))

    def _want(self, out: SetChargerOutput) -> None:
        prev = self._wanted
        self._version += 1
        self._wanted = _Wanted(out, self._version)
        if not out.enable and (prev is None or prev.out.enable):
            # a new off: only reads taken from now on may confirm it
            self._off_since = None
            self._off_confirmed = False
        self._wake.set()

    def _command_off(self) -> None:
        """Command the output off afresh: a confirmation must come from a read after it."""
        self._want(SetChargerOutput(0.0, 0.0, False))
        self._off_since = None
        self._off_confirmed = False

    def _starve_watchdog(self, reason: str) -> None:
        self._starve.add(reason)
        self.charger.stop_watchdog()

    def _feed_again(self, reason: str) -> None:
        self._starve.discard(reason)
        if not self._starve:
            self.charger.resume_watchdog()

    def off_unconfirmed(self, why: str) -> None:
        """Seam (issue 12 item 1): an off attempt failed or was not confirmed: starve the
        charger's watchdog at once and raise the alarm (both held until confirmed)."""
        self._starve_watchdog("off")
        self._alarms.raise_alarm(AlarmCode.CHARGER_OUTPUT_OFF_UNCONFIRMED, self.slot_id, why)

    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SetChargerOutput):
                self._want(a)
            elif isinstance(a, FeedWatchdog):
                if a.feed:
                    self._feed_again("offline")
                else:
                    self._starve_watchdog("offline")
                    # Remembered by the device owner: written (off) first thing on reconnect.
                    self._want(SetChargerOutput(0.0, 0.0, False))
            elif isinstance(a, RaiseAlarm | ClearAlarm):
                carry_out(self._alarms, a)
            elif isinstance(a, SessionCommand):
                self._session_command(a)
            elif isinstance(a, BeginSession):
                self._begin_again()  # docked, in service, once the stopped session has ended

    def _session_command(self, c: SessionCommand) -> None:
        if c.kind is SessionCommandKind.START:
            self.link.start()
        elif c.kind is SessionCommandKind.STOP:
            self.link.stop(c.reason, c.faults, c.detail)
        elif c.kind is SessionCommandKind.UPDATE_MEASUREMENTS and c.measurements is not None:
            self.link.update_measurements(c.measurements)
        elif c.kind is SessionCommandKind.UPDATE_LIMITS and c.limits is not None:
            self.link.update_limits(c.limits)

    async def write_output(self, out: SetChargerOutput) -> None:
        """Seam (issue 12 item 1): carry out one wanted output through the map's points
        (`ChargerControl`). Off: the limit to 0 first (a map with no enable point is still
        switched off), then enable false; every off write is tried even if one fails. On: only
        with a positive voltage and current setpoint."""
        if not out.enable or not SlotCore.enable_allowed(out.voltage_v, out.current_a):
            errors: list[ModbusError] = []
            writes = sorted(self.control.off_writes(), key=lambda w: w[0] == "enable")
            for name, value in writes:
                try:
                    await self.charger.write(name, value)
                except ModbusError as e:
                    errors.append(e)
            if errors:
                raise errors[0]
            return
        measured = _number(self.charger.snapshot(), "output_voltage_v")
        for name, value in self.control.on_writes(out.voltage_v, out.current_a, measured):
            await self.charger.write(name, value)

    async def _wait_wake(self, timeout_s: float | None) -> bool:
        """Wait for a new wanted output (or a confirmation); False when `timeout_s` passed."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            return False
        finally:
            self._wake.clear()
        return True

    def _confirm_wait_s(self) -> float:
        # a fresh current read needs one fast cycle (and a slow machine some slack)
        return max(0.5, 3 * self.charger.tick_s)

    async def _writer(self) -> None:
        done = 0
        retry = Backoff(self.off_retry_initial_s, self.off_retry_max_s)
        failures = 0  # writes failed or offs unconfirmed in a row
        while True:
            delay = retry.delay(failures + 1)
            w = self._wanted
            if w is None or (w.version == done and (w.out.enable or self._off_confirmed)):
                await self._wait_wake(None)
                continue
            if w.version == done:
                # Off written, not yet confirmed: give the poll time to read it; then it counts
                # as unconfirmed and is written again with backoff.
                if await self._wait_wake(max(self._confirm_wait_s(), delay)):
                    continue
                if self._wanted is w and not self._off_confirmed:
                    self.off_unconfirmed("no read after the off command shows the output off")
                    done = 0
                    failures += 1
                continue
            if not w.out.enable and self._off_since is None:
                self._off_since = self._clock.monotonic()
            try:
                await self.write_output(w.out)
            except ModbusError as e:
                self.writes_failed += 1
                if self.writes_failed == 1 or self.writes_failed % 50 == 0:
                    log.warning(
                        "charger write failed",
                        slot=self.slot_id,
                        error=str(e),
                        failures=self.writes_failed,
                    )
                if not w.out.enable:
                    self.off_unconfirmed(f"off write failed: {e}")
                # not done: written again after a short backoff (or at once for a newer request)
                await self._wait_wake(delay)
                failures += 1
                continue
            done = w.version
            if w.out.enable:
                failures = 0
