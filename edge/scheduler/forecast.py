"""Swap forecast: an hourly profile from config, corrected by the arrivals actually seen."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from edge.scheduler.config import DAY_S

_HOUR_S = 3600.0


class SwapForecast:
    """Expected swaps per local hour, scaled by `factor`: (seen + k) / (expected + k) over a
    trailing window, clipped, so a busier or quieter day than the profile moves the forecast."""

    __slots__ = (
        "_profile",
        "_window_s",
        "_k",
        "_seen",
        "_lo",
        "_hi",
        "_soc_n",
        "_soc_mean",
        "_start_s",
    )

    def __init__(
        self,
        profile_per_hour: Sequence[float],
        *,
        window_s: float = 3 * _HOUR_S,
        prior_swaps: float = 2.0,
        clip: tuple[float, float] = (0.5, 2.0),
        arrival_soc_pct: float = 25.0,
    ) -> None:
        if len(profile_per_hour) != 24:
            raise ValueError("profile_per_hour needs 24 values")
        self._profile = [float(x) for x in profile_per_hour]
        self._window_s = window_s
        self._k = prior_swaps
        self._lo, self._hi = clip
        self._seen: deque[tuple[float, float]] = deque()  # (t_s, day_s)
        self._soc_n = 1  # the configured arrival SOC counts as one observation
        self._soc_mean = arrival_soc_pct
        self._start_s: float | None = None  # observation starts here: no history before

    def observe(self, t_s: float, day_s: float, soc_pct: float | None = None) -> None:
        """A vehicle arrived (whether or not it could be served at once)."""
        if self._start_s is None:
            self._start_s = t_s
        self._seen.append((t_s, day_s))
        if soc_pct is not None:
            self._soc_n += 1
            self._soc_mean += (soc_pct - self._soc_mean) / self._soc_n

    @property
    def arrival_soc_pct(self) -> float:
        return self._soc_mean

    def _profile_count(self, from_day_s: float, length_s: float) -> float:
        """Profile swaps expected in [from, from + length) (uniform inside each hour)."""
        total = 0.0
        t = from_day_s % DAY_S
        left = length_s
        while left > 1e-9:
            h = int(t // _HOUR_S) % 24
            step = min(left, (h + 1) * _HOUR_S - t)
            total += self._profile[h] * step / _HOUR_S
            left -= step
            t = (t + step) % DAY_S
        return total

    def factor(self, t_s: float, day_s: float) -> float:
        if self._start_s is None:
            self._start_s = t_s
        while self._seen and self._seen[0][0] < t_s - self._window_s:
            self._seen.popleft()
        span = min(self._window_s, t_s - self._start_s)
        if span <= 0:
            return 1.0
        expected = self._profile_count(day_s - span, span)
        f = (len(self._seen) + self._k) / (expected + self._k)
        return min(self._hi, max(self._lo, f))

    def expected(self, day_s: float, length_s: float, factor: float = 1.0) -> float:
        return self._profile_count(day_s, length_s) * factor

    def arrival_times(self, day_s: float, horizon_s: float, factor: float) -> list[float]:
        """Offsets (s from `day_s`) at which the cumulative forecast reaches 1, 2, 3, ..."""
        out: list[float] = []
        acc = 0.0
        off = 0.0
        t = day_s % DAY_S
        nxt = 1.0
        while off < horizon_s - 1e-9:
            h = int(t // _HOUR_S) % 24
            step = min(horizon_s - off, (h + 1) * _HOUR_S - t)
            rate = self._profile[h] * factor / _HOUR_S
            gain = rate * step
            while rate > 0 and acc + gain >= nxt - 1e-12:
                out.append(off + (nxt - acc) / rate)
                nxt += 1.0
            acc += gain
            off += step
            t = (t + step) % DAY_S
        return out
