"""Capped exponential backoff, one definition for every retry loop (sans-I/O)."""

from __future__ import annotations

import random


class Backoff:
    """`next_delay()` counts failures itself; `delay(n)` answers for a count kept elsewhere.

    With `jitter`, a delay is drawn from [base/2, base] so stations restarting together do not
    reconnect together.
    """

    __slots__ = ("initial_s", "max_s", "factor", "failures", "_rng")

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        factor: float = 2.0,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.failures = 0
        self._rng = rng

    def delay(self, failures: int) -> float:
        """The delay after `failures` consecutive failures (1 -> initial_s)."""
        exponent = min(max(0, failures - 1), 64)
        return float(min(self.max_s, self.initial_s * self.factor**exponent))

    def next_delay(self) -> float:
        self.failures += 1
        base = self.delay(self.failures)
        if self._rng is None:
            return base
        return float(base * (0.5 + 0.5 * self._rng.random()))

    def to_max(self) -> None:
        """Errors a retry will not fix soon (bad credentials) wait the longest."""
        self.failures = 64

    def reset(self) -> None:
        self.failures = 0
