"""The swap commands of the MQTT command layer (`edge.telemetry.target.CommandTarget`).

The station's command target delegates `start_swap`, `reset_fault`, `retry_step`,
`refit_original` and `manual` here; refusals become the telemetry room's `Rejected`.
"""

from __future__ import annotations

from typing import Any

from edge.swap.coordinator import SwapCoordinator
from edge.swap.sequence import Rejected as SwapRejected
from edge.telemetry.models import (
    ManualParams,
    RefitOriginalParams,
    ResetFaultParams,
    RetryStepParams,
    StartSwapParams,
)
from edge.telemetry.target import Rejected


class SwapCommands:
    def __init__(self, coordinator: SwapCoordinator) -> None:
        self.coordinator = coordinator

    async def _run(self, command: str, params: dict[str, Any]) -> None:
        try:
            await self.coordinator.execute(command, params)
        except SwapRejected as e:
            raise Rejected(e.message) from None

    async def start_swap(self, params: StartSwapParams) -> None:
        # announced_pack_id: the pack the vehicle says it carries (checked when it docks)
        p = params.model_dump()
        await self._run(
            "start_swap",
            {
                "vehicle_id": p["vehicle_id"],
                "pack_type": p["pack_type"],
                "announced_pack_id": p.get("announced_pack_id"),
            },
        )

    async def reset_fault(self, params: ResetFaultParams) -> None:
        await self._run("reset_fault", {})

    async def retry_step(self, params: RetryStepParams) -> None:
        await self._run("retry_step", {"swap_id": params.swap_id})

    async def refit_original(self, params: RefitOriginalParams) -> None:
        await self._run("refit_original", {"swap_id": params.swap_id})

    async def manual(self, params: ManualParams) -> None:
        await self._run("manual", {"enabled": params.enabled})
