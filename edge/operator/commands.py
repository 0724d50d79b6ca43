"""The station's side of every command: one typed call per validated command (the command
service in `edge.operator.service` has already checked route, policy, signature and params)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers.core.clock import Clock
from drivers.core.log import get_logger
from edge.command_types import ErrorCode, Rejected
from edge.events import EventSink
from edge.scheduler.core import InvalidRequestError, SchedulerError
from edge.state import OperatingMode, StationState
from edge.telemetry.models import (
    DisableSlotParams,
    EnableSlotParams,
    EventType,
    InventorySetParams,
    ManualParams,
    ModeChanged,
    Params,
    RefitOriginalParams,
    RefreshParams,
    ResetFaultParams,
    ResetSlotParams,
    RetryStepParams,
    SetModeParams,
    SetPowerLimitParams,
    StartSwapParams,
    StatusParams,
)

if TYPE_CHECKING:
    from edge.scheduler.service import SchedulerService
    from edge.slot.service import SlotService
    from edge.swap.coordinator import SwapCoordinator

log = get_logger("commands")


class Outbound(EventSink, Protocol):
    """Where the commands' own reports go (the station hub, then the publisher)."""

    def refresh(self) -> None: ...


def _rejected(reason: str) -> Rejected:
    return Rejected(ErrorCode.REJECTED, reason)


class OutOfService:
    """The slots an operator took out of service, kept in the state directory (atomic write)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.slots: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                # Unknown means unsafe: keep the file, start with nothing taken out, say so.
                log.error("out-of-service list unreadable; every slot in service", error=str(e))
            else:
                if isinstance(data, dict):
                    self.slots = {str(k): str(v) for k, v in data.items()}

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.slots, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class StationCommands:
    """Carries out commands; raises Rejected(code, message) when it cannot."""

    def __init__(
        self,
        state: StationState,
        clock: Clock,
        out_of_service: OutOfService | None = None,
        *,
        scheduler: SchedulerService | None = None,
        slots: dict[str, SlotService] | None = None,
        swap: SwapCoordinator | None = None,
        outbound: Outbound | None = None,
    ) -> None:
        self.state = state
        self.clock = clock
        self.scheduler = scheduler
        self.slots = slots or {}
        self.swap = swap
        self.outbound = outbound
        self.out_of_service = out_of_service or OutOfService(None)

    def apply_out_of_service(self) -> None:
        """Start-up: the slots taken out before a restart stay out."""
        for slot_id, slot in self.slots.items():
            if slot_id in self.out_of_service.slots:
                slot.set_in_service(False)

    async def carry_out(self, params: Params) -> dict[str, Any] | None:
        match params:
            case StatusParams():
                return self._swap().status()
            case StartSwapParams():
                return await self.start_swap(params)
            case SetPowerLimitParams():
                await self.set_power_limit(params)
            case SetModeParams():
                await self.set_mode(params)
            case RefreshParams():
                if self.outbound is not None:
                    self.outbound.refresh()
            case ResetFaultParams():
                return await self._swap().execute("reset_fault", {})
            case RetryStepParams():
                return await self._swap().execute("retry_step", {"swap_id": params.swap_id})
            case RefitOriginalParams():
                return await self._swap().execute("refit_original", {"swap_id": params.swap_id})
            case ManualParams():
                return await self._swap().execute(
                    "manual", {"enabled": params.enabled, "swap_id": params.swap_id}
                )
            case InventorySetParams():
                p: dict[str, Any] = {"pack_id": params.pack_id, "place": params.place}
                if params.pack_type is not None:
                    p["pack_type"] = params.pack_type
                return await self._swap().execute("inventory_set", p)
            case ResetSlotParams():
                return self.reset_slot(params.slot_id)
            case DisableSlotParams():
                return self.set_in_service(params.slot_id, False, params.reason)
            case EnableSlotParams():
                return self.set_in_service(params.slot_id, True, "")
            case _:
                raise AssertionError(f"no dispatch for {type(params).__name__}")
        return None

    async def set_power_limit(self, params: SetPowerLimitParams) -> None:
        if self.scheduler is None:
            raise _rejected("scheduler not running")
        try:
            self.scheduler.set_power_limit(params.power_kw, params.valid_until)
        except InvalidRequestError as e:
            raise Rejected(ErrorCode.OUT_OF_RANGE, str(e)) from e
        except SchedulerError as e:
            raise _rejected(str(e)) from e

    async def set_mode(self, params: SetModeParams, source: str = "command") -> None:
        if params.mode == self.state.operating_mode:
            return
        self.state.operating_mode = OperatingMode(params.mode)
        log.info("operating mode changed", mode=str(params.mode), source=source)
        if self.outbound is not None:
            self.outbound.emit_event(
                EventType.MODE_CHANGED,
                ModeChanged(operating_mode=OperatingMode(params.mode), source=source),
            )

    def _swap(self) -> SwapCoordinator:
        if self.swap is None:
            raise _rejected("no swap robot configured")
        return self.swap

    async def start_swap(self, params: StartSwapParams) -> dict[str, Any]:
        # A mode rule of the station, the same for every route.
        if self.state.operating_mode is not OperatingMode.NORMAL:
            raise _rejected(f"station in {self.state.operating_mode} mode: no new swaps")
        return await self._swap().execute(
            "start_swap",
            {
                "vehicle_id": params.vehicle_id,
                "pack_type": params.pack_type,
                "announced_pack_id": params.announced_pack_id,
            },
        )

    def _slot(self, slot_id: str) -> SlotService:
        slot = self.slots.get(slot_id)
        if slot is None:
            raise _rejected(f"no slot {slot_id!r} (slots: {', '.join(self.slots)})")
        return slot

    def reset_slot(self, slot_id: str) -> dict[str, Any]:
        """Clear this slot's BMS-lost latch; refused unless it is latched and the latch is one
        an operator may clear (a charger-offline latch clears itself)."""
        from edge.slot.core import SlotState

        slot = self._slot(slot_id)
        if slot_id in self.out_of_service.slots:
            raise _rejected(f"{slot_id} is out of service: enable_slot first")
        if slot.snapshot().state is not SlotState.UNAVAILABLE:
            raise _rejected(f"{slot_id} is not latched unavailable")
        slot.reset()
        if slot.snapshot().state is SlotState.UNAVAILABLE:
            raise _rejected(f"{slot_id}: charger offline; the latch clears when it is back")
        log.info("slot latch reset", slot=slot_id)
        return {"slot_id": slot_id, "state": str(slot.snapshot().state)}

    def set_in_service(self, slot_id: str, in_service: bool, reason: str) -> dict[str, Any]:
        slot = self._slot(slot_id)
        if not in_service and self.swap is not None:
            sw = self.swap.core.swap
            if sw is not None and slot_id in (sw.full_slot, sw.store_slot):
                raise _rejected(f"{slot_id} takes part in swap {sw.swap_id}")
        if in_service:
            self.out_of_service.slots.pop(slot_id, None)
        else:
            self.out_of_service.slots[slot_id] = reason
        self.out_of_service.save()  # on disk before the slot changes: a restart keeps it
        slot.set_in_service(in_service)
        log.info("slot service changed", slot=slot_id, in_service=in_service, reason=reason)
        return {"slot_id": slot_id, "in_service": in_service}
