"""Which telemetry to publish when (sans-I/O): on change beyond a per-field deadband, no more
often than a minimum interval per key, and a full refresh every `refresh_s`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def moved(old: Any, new: Any, deadband: float) -> bool:
    """True when `new` differs from `old` by at least `deadband` (numbers) or at all (others)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return bool(old != new)
    if isinstance(old, int | float) and isinstance(new, int | float):
        return abs(new - old) >= deadband if deadband > 0 else old != new
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() != new.keys() or any(moved(old[k], new[k], deadband) for k in new)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) != len(new) or any(
            moved(a, b, deadband) for a, b in zip(old, new, strict=True)
        )
    return bool(old != new)


class ChangeTracker:
    __slots__ = (
        "_deadbands",
        "_min_interval_s",
        "_refresh_s",
        "_current",
        "_published",
        "_last_pub",
        "_dirty",
        "_forced",
    )

    def __init__(
        self, deadbands: Mapping[str, float], min_interval_s: float, refresh_s: float
    ) -> None:
        self._deadbands = dict(deadbands)
        self._min_interval_s = min_interval_s
        self._refresh_s = refresh_s
        self._current: dict[str, dict[str, Any]] = {}
        self._published: dict[str, dict[str, Any]] = {}
        self._last_pub: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._forced: set[str] = set()

    def set(self, key: str, values: dict[str, Any]) -> bool:
        """Record the current values of `key`; True when they differ enough to publish."""
        self._current[key] = values
        last = self._published.get(key)
        if last is None:
            self._forced.add(key)
            return True
        if any(moved(last.get(f), v, self._deadbands.get(f, 0.0)) for f, v in values.items()):
            self._dirty.add(key)
            return True
        return False

    def current(self, key: str) -> dict[str, Any]:
        return self._current[key]

    def keys(self) -> list[str]:
        return list(self._current)

    def force_all(self) -> None:
        """After a (re)connect or a `refresh` command: everything goes out at once."""
        self._forced.update(self._current)

    def due(self, now: float) -> list[str]:
        out = []
        for key in self._current:
            last = self._last_pub.get(key)
            if (
                key in self._forced
                or last is None
                or (key in self._dirty and now - last >= self._min_interval_s)
                or now - last >= self._refresh_s
            ):
                out.append(key)
        return out

    def mark_published(self, key: str, now: float) -> None:
        self._published[key] = self._current[key]
        self._last_pub[key] = now
        self._dirty.discard(key)
        self._forced.discard(key)

    def next_deadline(self) -> float | None:
        """Monotonic time at which `due()` next has something without a new `set()`."""
        best: float | None = None
        for key in self._current:
            last = self._last_pub.get(key)
            if key in self._forced or last is None:
                return float("-inf")
            t = last + (self._min_interval_s if key in self._dirty else self._refresh_s)
            if key in self._dirty:
                t = min(t, last + self._refresh_s)
            best = t if best is None else min(best, t)
        return best
