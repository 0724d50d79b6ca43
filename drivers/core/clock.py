"""One injectable clock for everything time-dependent.

`monotonic()` drives timeouts and periods; `now()` gives wall-clock UTC for timestamps. Code takes
a `Clock` and never calls `time` directly, so tests move a `ManualClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (timeouts, periods)."""
        ...

    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC (timestamps on the wire)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Time that runs `speed` times faster than the system's, from `start` (wall; default now):
    the simulated world's clock, for what plans in world time (the demo's scheduler: tariff,
    forecast, reserve, leases). Protocol timers keep the system clock."""

    __slots__ = ("speed", "_mono0", "_wall0")

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._mono0 = time.monotonic()
        self._wall0 = start if start is not None else datetime.now(UTC)

    def monotonic(self) -> float:
        return self._mono0 + (time.monotonic() - self._mono0) * self.speed

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=(time.monotonic() - self._mono0) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """A clock that moves only when told. `sleep()` waits until `advance()` passes its deadline."""

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


def utc_iso(ts: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a Z suffix."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
