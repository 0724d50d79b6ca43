"""Turns the station's live state into telemetry, and slot state changes into scheduler triggers.

Slots call `slot_changed` on every charger cycle; this core service coalesces those into at most
one publish every `min_period_s` (telemetry applies its own deadbands and refresh on top).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from drivers.core.clock import Clock
from drivers.core.log import get_logger
from drivers.core.quality import Quality
from drivers.modbus.device import DeviceState
from edge.config import StationConfig
from edge.power import to_grid_side
from edge.scheduler.core import Allocation
from edge.slot.core import SlotState
from edge.state import StationState
from edge.telemetry.alarm_events import alarm_refs
from edge.telemetry.fit import fit
from edge.telemetry.models import (
    Details,
    RobotTelemetry,
    SlotTelemetry,
    StationTelemetry,
)
from edge.telemetry.service import Telemetry

if TYPE_CHECKING:
    from edge.scheduler.service import SchedulerService
    from edge.slot.service import SlotService
    from edge.swap.coordinator import SwapCoordinator

log = get_logger("publisher")


class StatePublisher:
    name = "publisher"

    def __init__(
        self,
        config: StationConfig,
        state: StationState,
        telemetry: Telemetry,
        clock: Clock,
        *,
        slots: dict[str, SlotService],
        scheduler: SchedulerService | None,
        robot: SwapCoordinator | None = None,
        min_period_s: float = 0.1,
    ) -> None:
        self.config = config
        self.state = state
        self.telemetry = telemetry
        self.clock = clock
        self.min_period_s = min_period_s
        self.slots = slots
        self.scheduler = scheduler
        # telemetry/robot follows the swap coordinator's view of the PLC.
        self.robot = robot
        self._robot_dirty = robot is not None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._slot_states: dict[str, tuple[SlotState, bool]] = {}
        self.publishes = 0

    # ---- inputs -------------------------------------------------------------------------
    def slot_changed(self, slot_id: str) -> None:
        self._dirty.add(slot_id)
        self._wake.set()
        slot = self.slots.get(slot_id)
        if self.scheduler is not None and slot is not None and slot.core.grant_binds():
            # A BCL above the grant: reallocate now, not at the next period (issue 13).
            self.scheduler.trigger(f"slot {slot_id} request")

    def robot_changed(self) -> None:
        self._robot_dirty = True
        self._wake.set()

    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> str:
        return self.telemetry.emit_event(event_type, details)

    def refresh(self) -> None:
        self.telemetry.refresh()

    def allocation(self, alloc: Allocation) -> None:
        g = self.state.grid
        g.limit_kw = alloc.limit_kw
        g.grid_mode = alloc.grid_mode
        g.grid_reason = alloc.grid_reason
        g.tariff_period = alloc.tariff_period
        self._wake.set()

    # ---- the service --------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.publish()
            await self.clock.sleep(self.min_period_s)

    async def stop(self) -> None:
        self.publish()

    @staticmethod
    def _slot_quality(slot: SlotService) -> Quality:
        """Bad while its charger is offline; stale while its reads lag; else the last reading's."""
        state = slot.charger.state
        if state is DeviceState.OFFLINE:
            return Quality.BAD
        if state is not DeviceState.ONLINE:
            return Quality.STALE
        reading = slot.core.reading
        if reading is None:
            return Quality.STALE
        # a reading the charger marks as no value is published as bad
        return Quality.BAD if reading.quality is Quality.INVALID else reading.quality

    def publish(self) -> None:
        dirty, self._dirty = self._dirty, set()
        grid_kw = 0.0
        counts = {"total": 0, "full": 0, "charging": 0, "unavailable": 0}
        ready = self.config.grid.ready_soc_pct
        efficiency = self.config.grid.pack.charging_efficiency
        for slot_id, slot in self.slots.items():
            snap = slot.snapshot()
            power_kw = (
                (snap.voltage_v or 0.0) * (snap.current_a or 0.0) / 1000.0
                if snap.current_a
                else 0.0
            )
            grid_kw += to_grid_side(max(0.0, power_kw), efficiency)
            if slot.docked:
                counts["total"] += 1
                if snap.soc_pct is not None and snap.soc_pct >= ready:
                    counts["full"] += 1
            if snap.state is SlotState.CHARGING:
                counts["charging"] += 1
            if snap.state in (SlotState.UNAVAILABLE, SlotState.FAULTED):
                counts["unavailable"] += 1
            key = (snap.state, slot.docked)
            if self._slot_states.get(slot_id) != key:
                self._slot_states[slot_id] = key
                if self.scheduler is not None:
                    self.scheduler.trigger(f"slot {slot_id} {snap.state}")
            if slot_id in dirty:
                # fit(): a value that does not fit the model goes out null, never raises here.
                slot_msg = fit(
                    SlotTelemetry,
                    {
                        "pack_id": snap.pack_id,
                        "soc_pct": snap.soc_pct,
                        "voltage_v": snap.voltage_v,
                        "current_a": snap.current_a,
                        "power_kw": round(power_kw, 2),
                        "temp_max_c": snap.max_temperature_c,
                        "temp_min_c": snap.min_temperature_c,
                        "session_phase": str(snap.phase),
                        "charger_state": slot.charger_state(),
                        "available": snap.state is not SlotState.UNAVAILABLE,
                        "in_service": slot.in_service,
                        "quality": self._slot_quality(slot),
                    },
                )
                if slot_msg is not None:
                    self.telemetry.update_slot(slot_id, slot_msg)
        g = self.state.grid
        g.power_kw = grid_kw
        lease = self.scheduler.active_limit() if self.scheduler else None
        remote = lease is not None and lease[1] == "dispatch"
        station_msg = fit(
            StationTelemetry,
            {
                "grid_power_kw": round(grid_kw, 2),
                "grid_cap_kw": g.cap_kw,
                "grid_limit_kw": g.limit_kw,
                "remote_limit_kw": lease[0] if remote and lease else None,
                "operating_mode": self.state.operating_mode,
                "grid_mode": g.grid_mode,
                "grid_reason": g.grid_reason,
                "tariff_period": g.tariff_period,
                "packs_total": counts["total"],
                "packs_full": counts["full"],
                "packs_charging": counts["charging"],
                "packs_unavailable": counts["unavailable"],
                "active_alarms": alarm_refs(self.state.active_alarms),
                "grid_plan": self.scheduler.plan_horizon() if self.scheduler else None,
            },
        )
        if station_msg is not None:
            self.telemetry.update_station(station_msg)
        if self._robot_dirty and self.robot is not None:
            self._robot_dirty = False
            robot_msg = fit(RobotTelemetry, robot_fields(self.robot))
            if robot_msg is not None:
                self.telemetry.update_robot(robot_msg)
        self.publishes += 1


def robot_fields(coordinator: SwapCoordinator) -> dict[str, Any]:
    """The robot as docs/mqtt.md describes it: the sequence's mode, the swap and its active
    step, each unit's position, the interlock inputs; quality bad while the PLC is offline,
    stale before its first status."""
    core = coordinator.core
    sw = core.swap
    active = [s for s in sw.plan if sw.runs[s].status == "active"] if sw is not None else []
    plc = core.plc
    if not core.plc_online:
        quality = Quality.BAD if plc is not None else Quality.STALE
    else:
        quality = Quality.GOOD
    return {
        "sequence_state": core.mode,
        "swap_id": sw.swap_id if sw is not None else None,
        "step": active[0] if active else None,
        "axes_mm": {u: float(st.position_mm) for u, st in plc.units.items()} if plc else {},
        "interlocks": dict(plc.inputs) if plc else {},
        "quality": quality,
    }
