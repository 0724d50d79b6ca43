"""Time-of-use tariff lookup: which period and price apply at a time of day."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from edge.scheduler.config import DAY_S, TariffConfig, parse_window


@dataclass(frozen=True, slots=True)
class Period:
    name: str
    price_per_kwh: float


class Tariff:
    """Segments of the day (seconds after local midnight), each with its period."""

    __slots__ = ("_starts", "_periods", "currency", "peak_names", "min_price", "max_price")

    def __init__(self, config: TariffConfig) -> None:
        marks: list[tuple[float, Period]] = []
        for p in config.periods:
            period = Period(p.name, p.price_per_kwh)
            for w in p.windows:
                start, end = parse_window(w)
                marks.append((start * 60.0, period))
                if end < start:  # wraps midnight: the piece after 00:00
                    marks.append((0.0, period))
        marks.sort(key=lambda m: m[0])
        # The config validator guarantees full coverage without overlap, so the starts tile the
        # day; equal starts cannot happen.
        self._starts = [m[0] for m in marks]
        self._periods = [m[1] for m in marks]
        self.currency = config.currency
        prices = [p.price_per_kwh for p in config.periods]
        self.min_price = min(prices)
        self.max_price = max(prices)
        self.peak_names = frozenset(
            p.name for p in config.periods if p.price_per_kwh == self.max_price
        )

    def at(self, day_s: float) -> Period:
        i = bisect.bisect_right(self._starts, day_s % DAY_S) - 1
        return self._periods[i]

    def next_change_s(self, day_s: float) -> float:
        """Seconds from `day_s` until the period may change (a segment boundary)."""
        d = day_s % DAY_S
        i = bisect.bisect_right(self._starts, d)
        nxt = self._starts[i] if i < len(self._starts) else DAY_S
        return nxt - d

    def is_peak(self, day_s: float) -> bool:
        return self.at(day_s).name in self.peak_names
