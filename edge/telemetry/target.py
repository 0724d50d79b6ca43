"""What the MQTT route asks of the station's command service (`edge.operator.service`), and
`InMemoryTarget`, a small station behind that service for tests and benches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.command_types import ErrorCode, Origin, Rejected, Signature
from edge.telemetry.models import (
    COMMAND_PARAMS,
    ManualParams,
    OperatingMode,
    Params,
    RefitOriginalParams,
    RefreshParams,
    ResetFaultParams,
    RetryStepParams,
    SetModeParams,
    SetPowerLimitParams,
    StartSwapParams,
)

__all__ = ["CommandTarget", "InMemoryTarget", "Rejected"]


class CommandTarget(Protocol):
    """The command service, as the MQTT route uses it: `admit` (known command, remote policy)
    runs before the envelope is validated, `execute` does the rest; `refuse` logs a refusal the
    route made itself. Both raise `Rejected(code, message)`."""

    def admit(self, name: str, params: Mapping[str, Any], origin: Origin) -> None: ...

    async def execute(
        self,
        name: str,
        params: Mapping[str, Any],
        origin: Origin,
        *,
        signature: Signature | None = None,
    ) -> dict[str, Any]: ...

    def refuse(self, name: str, origin: Origin, e: Rejected) -> None: ...


@dataclass
class InMemoryTarget:
    """A station that keeps a little state and a call log; refuses what a real one would."""

    mode: OperatingMode = OperatingMode.NORMAL
    power_limit_kw: float | None = None
    fault_latched: bool = False
    manual_mode: bool = False
    swap_running: bool = False
    swap_id: str = "SW-1"
    refreshes: int = 0
    calls: list[tuple[str, Params]] = field(default_factory=list)

    def _rejected(self, reason: str) -> Rejected:
        return Rejected(ErrorCode.REJECTED, reason)

    def _swap(self, swap_id: str) -> None:
        if not self.swap_running:
            raise self._rejected("no swap in progress")
        if swap_id != self.swap_id:
            raise self._rejected(f"{swap_id} is not the current swap ({self.swap_id})")

    async def carry_out(self, params: Params) -> dict[str, Any] | None:
        name = next(n for n, m in COMMAND_PARAMS.items() if m is type(params))
        self.calls.append((name, params))
        match params:
            case SetPowerLimitParams():
                self.power_limit_kw = params.power_kw
            case SetModeParams():
                self.mode = params.mode
            case ResetFaultParams():
                if not self.fault_latched:
                    raise self._rejected("no fault latched")
                self.fault_latched = False
            case RetryStepParams():
                self._swap(params.swap_id)
            case RefitOriginalParams():
                self._swap(params.swap_id)
            case ManualParams():
                self._swap(params.swap_id)
                self.manual_mode = params.enabled
            case StartSwapParams():
                if self.mode is not OperatingMode.NORMAL:
                    raise self._rejected(f"station in {self.mode} mode: no new swaps")
                if self.swap_running:
                    raise self._rejected("a swap is running")
                self.swap_running = True
            case RefreshParams():
                self.refreshes += 1
            case _:
                raise self._rejected(f"{name} not supported here")
        return None
