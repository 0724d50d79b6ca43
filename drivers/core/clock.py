"""One injectable clock for everything time-dependent.

`monotonic()` drives timeouts and periods; `now()` gives wall-clock UTC for timestamps. Code takes
a `Clock` and never calls `time` directly, so tests move a manual clock (tests/doubles.py)
instead of sleeping.
"""

from __future__ import annotations

import asyncio
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


def utc_iso(ts: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a Z suffix."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
