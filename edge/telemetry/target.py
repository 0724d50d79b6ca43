"""What remote commands ask of the station: one async method per command. The station
implements `CommandTarget`; `InMemoryTarget` is a simple one for tests and benches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from edge.telemetry.models import (
    ManualParams,
    OperatingMode,
    Params,
    RefitOriginalParams,
    ResetFaultParams,
    RetryStepParams,
    SetModeParams,
    SetPowerLimitParams,
    StartSwapParams,
)


class Rejected(Exception):  # noqa: N818 - the result code is `rejected`
    """A valid command the station cannot carry out now; `reason` goes to the result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutOfRange(Rejected):
    """A value the station's own limits refuse (the result code is `out_of_range`)."""


class CommandTarget(Protocol):
    """Each method returns once the station has accepted the command (not when a swap ends) and
    raises `Rejected(reason)` when it cannot carry it out now."""

    async def set_power_limit(self, params: SetPowerLimitParams) -> None: ...

    async def set_mode(self, params: SetModeParams) -> None: ...

    async def reset_fault(self, params: ResetFaultParams) -> None: ...

    async def retry_step(self, params: RetryStepParams) -> None: ...

    async def refit_original(self, params: RefitOriginalParams) -> None: ...

    async def manual(self, params: ManualParams) -> None: ...

    async def start_swap(self, params: StartSwapParams) -> None: ...


@dataclass
class InMemoryTarget:
    """Keeps a little state and a call log; refuses what a real station would refuse."""

    mode: OperatingMode = OperatingMode.NORMAL
    power_limit_kw: float | None = None
    fault_latched: bool = False
    manual_mode: bool = False
    swap_running: bool = False
    calls: list[tuple[str, Params]] = field(default_factory=list)

    async def set_power_limit(self, params: SetPowerLimitParams) -> None:
        self.calls.append(("set_power_limit", params))
        self.power_limit_kw = params.power_kw

    async def set_mode(self, params: SetModeParams) -> None:
        self.calls.append(("set_mode", params))
        self.mode = params.mode

    async def reset_fault(self, params: ResetFaultParams) -> None:
        self.calls.append(("reset_fault", params))
        if not self.fault_latched:
            raise Rejected("no fault latched")
        self.fault_latched = False

    async def retry_step(self, params: RetryStepParams) -> None:
        self.calls.append(("retry_step", params))
        if not self.swap_running:
            raise Rejected("no swap waiting for a retry")

    async def refit_original(self, params: RefitOriginalParams) -> None:
        self.calls.append(("refit_original", params))
        if not self.swap_running:
            raise Rejected("no swap to recover")

    async def manual(self, params: ManualParams) -> None:
        self.calls.append(("manual", params))
        self.manual_mode = params.enabled

    async def start_swap(self, params: StartSwapParams) -> None:
        self.calls.append(("start_swap", params))
        if self.mode is not OperatingMode.NORMAL:
            raise Rejected(f"station in {self.mode} mode")
        if self.swap_running:
            raise Rejected("a swap is running")
        self.swap_running = True
