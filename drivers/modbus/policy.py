"""Sans-I/O decisions of the device owner: adaptive timeout, offline detection, backoff."""

from __future__ import annotations

from dataclasses import dataclass


class AdaptiveTimeout:
    """timeout = clamp(4 x latency estimate, floor, ceiling). The estimate follows rises at once
    (a slower device must not time out) and decays slowly (one fast answer proves little)."""

    __slots__ = ("floor_s", "max_s", "_est_s")

    def __init__(self, floor_s: float, max_s: float) -> None:
        self.floor_s = floor_s
        self.max_s = max_s
        self._est_s = 0.0

    def observe(self, latency_s: float) -> None:
        if latency_s >= self._est_s:
            self._est_s = latency_s
        else:
            self._est_s += 0.1 * (latency_s - self._est_s)

    @property
    def latency_s(self) -> float:
        return self._est_s

    @property
    def timeout_s(self) -> float:
        return min(self.max_s, max(self.floor_s, 4.0 * self._est_s))


@dataclass(slots=True)
class OfflineDetector:
    """Counts consecutive cycles without any answer; `True` from `cycle()` means go offline."""

    after_cycles: int
    failed_in_row: int = 0

    def cycle(self, answered: bool) -> bool:
        if answered:
            self.failed_in_row = 0
            return False
        self.failed_in_row += 1
        return self.failed_in_row >= self.after_cycles
