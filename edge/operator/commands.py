"""The station's side of remote and local commands (the telemetry room's CommandTarget)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.core.clock import Clock
from drivers.core.log import get_logger
from edge.scheduler.core import InvalidRequestError, SchedulerError
from edge.state import OperatingMode, StationState
from edge.telemetry.models import (
    ManualParams,
    RefitOriginalParams,
    ResetFaultParams,
    RetryStepParams,
    SetModeParams,
    SetPowerLimitParams,
    StartSwapParams,
)
from edge.telemetry.target import OutOfRange, Rejected

if TYPE_CHECKING:
    from edge.scheduler.service import SchedulerService
    from edge.slot.service import SlotService
    from edge.swap.remote import SwapCommands
    from edge.telemetry.service import Telemetry

log = get_logger("commands")


class StationCommands:
    """Carries out commands; raises Rejected (or OutOfRange) with the reason when it cannot."""

    def __init__(self, state: StationState, clock: Clock) -> None:
        self.state = state
        self.clock = clock
        self.scheduler: SchedulerService | None = None
        self.slots: dict[str, SlotService] = {}
        self.telemetry: Telemetry | None = None
        self.swap: SwapCommands | None = None

    async def set_power_limit(self, params: SetPowerLimitParams) -> None:
        if self.scheduler is None:
            raise Rejected("scheduler not running")
        try:
            self.scheduler.set_power_limit(params.power_kw, params.valid_until)
        except InvalidRequestError as e:
            raise OutOfRange(str(e)) from e
        except SchedulerError as e:
            raise Rejected(str(e)) from e

    async def set_mode(self, params: SetModeParams, source: str = "remote") -> None:
        if params.mode == self.state.operating_mode:
            return
        self.state.operating_mode = OperatingMode(params.mode)
        log.info("operating mode changed", mode=str(params.mode), source=source)
        if self.telemetry is not None:
            self.telemetry.emit_event(
                "mode.changed", {"operating_mode": str(params.mode), "source": source}
            )

    def _swap(self) -> SwapCommands:
        if self.swap is None:
            raise Rejected("no swap robot configured")
        return self.swap

    async def reset_fault(self, params: ResetFaultParams) -> None:
        for slot in self.slots.values():
            slot.reset()
        await self._swap().reset_fault(params)

    async def retry_step(self, params: RetryStepParams) -> None:
        await self._swap().retry_step(params)

    async def refit_original(self, params: RefitOriginalParams) -> None:
        await self._swap().refit_original(params)

    async def manual(self, params: ManualParams) -> None:
        await self._swap().manual(params)

    async def start_swap(self, params: StartSwapParams) -> None:
        if self.state.operating_mode is not OperatingMode.NORMAL:
            raise Rejected(f"station in {self.state.operating_mode} mode: no new swaps")
        await self._swap().start_swap(params)
