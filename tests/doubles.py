"""Test doubles shared by the tests and the benches (never shipped: the product has none)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.command_types import ErrorCode, Rejected
from edge.state import OperatingMode
from edge.telemetry.models import (
    COMMAND_PARAMS,
    ManualParams,
    Params,
    RefitOriginalParams,
    RefreshParams,
    ResetFaultParams,
    RetryStepParams,
    SetModeParams,
    SetPowerLimitParams,
    StartSwapParams,
)


class RecordingAlarmSink:
    """An `AlarmSink` (drivers.core.alarm_sink) that keeps the active set and the history."""

    def __init__(self) -> None:
        self.active: set[tuple[str, str]] = set()
        self.history: list[tuple[str, str, str]] = []

    def raise_alarm(self, code: str, source: str, detail: str = "") -> None:
        if (code, source) not in self.active:
            self.active.add((code, source))
            self.history.append(("raised", code, source))

    def clear_alarm(self, code: str, source: str) -> None:
        if (code, source) in self.active:
            self.active.discard((code, source))
            self.history.append(("cleared", code, source))


@dataclass
class InMemoryTarget:
    """Behind the command service (a `carry_out`): a station that keeps a little state and a call log; refuses what a real one would."""

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


class ManualClock:
    """A `Clock` (drivers.core.clock) that moves only when told. `sleep()` waits until `advance()` passes its deadline."""

    __slots__ = ("_mono", "_wall0", "_sleepers", "_seq")

    def __init__(self, start: float = 1000.0, wall: datetime | None = None) -> None:
        self._mono = start
        self._wall0 = (wall or datetime(2026, 1, 1, tzinfo=UTC)) - timedelta(seconds=start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._mono)

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for *_, f in self._sleepers if not f.done())
