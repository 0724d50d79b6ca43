"""The live scheduler service: an asyncio task that runs the core every `grid.period_s` and at
once when triggered (dispatch limit, pack docked or removed, fault), and publishes each
`Allocation` through a callback (the slot controllers apply the grants; telemetry shows
`grid_mode`, `grid_reason`, `tariff_period`).

Time comes from an injected Clock: `monotonic()` for periods and leases, `now()` (UTC) turned
into local time of day for the tariff and forecast, and for `valid_until` of commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers.core.clock import Clock
from drivers.core.log import get_logger
from edge.scheduler.core import Allocation, Instant, Lease, Scheduler, SchedulerError, SlotInput
from edge.scheduler.predictive import PredictivePolicy
from edge.scheduler.solver import ProcessPlanner

log = get_logger("scheduler")

SlotReader = Callable[[], Sequence[SlotInput]]
Publisher = Callable[[Allocation], None]


class SchedulerService:
    """Wraps a `Scheduler` for the daemon. Start `run()` as a named task in the station's
    TaskGroup; call `trigger()` on any change that must be reallocated within the second."""

    WAIT_FORGET_S = 600.0

    def __init__(
        self,
        scheduler: Scheduler,
        clock: Clock,
        read_slots: SlotReader,
        publish: Publisher,
        *,
        solver_process: bool = True,
    ) -> None:
        self.scheduler = scheduler
        # The predictive policy's solves run in a child process this service owns (the
        # daemon never imports numpy and never waits on a solve).
        self.solver: ProcessPlanner | None = None
        policy = scheduler.policy
        if solver_process and isinstance(policy, PredictivePolicy):
            self.solver = ProcessPlanner(on_result=lambda: self.trigger("plan_ready"))
            policy.planner = self.solver
        self._clock = clock
        self._read_slots = read_slots
        self._publish = publish
        try:
            self._tz = ZoneInfo(scheduler.config.timezone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise SchedulerError(f"unknown timezone {scheduler.config.timezone!r}") from e
        self._wake = asyncio.Event()
        self._waiting: dict[str, float] = {}  # vehicle id -> last refused request (monotonic)
        self.allocations = 0
        self.errors = 0

    @property
    def last(self) -> Allocation | None:
        return self.scheduler.last

    def instant(self) -> Instant:
        local = self._clock.now().astimezone(self._tz)
        day_s = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        return Instant(self._clock.monotonic(), day_s)

    def _to_monotonic(self, when: datetime) -> float:
        if when.tzinfo is None:
            raise SchedulerError("valid_until must carry a timezone (RFC 3339 UTC)")
        return self._clock.monotonic() + (when - self._clock.now()).total_seconds()

    # -- inputs (each wakes the loop: reallocation within the same loop turn) -------------

    def trigger(self, reason: str) -> None:
        self.scheduler.trigger(reason)
        self._wake.set()

    def set_power_limit(self, power_kw: float, valid_until: datetime) -> Lease:
        """The `set_power_limit` command. Raises InvalidRequestError (maps to out_of_range)."""
        lease = self.scheduler.set_power_limit(
            power_kw, self._to_monotonic(valid_until), self._clock.monotonic()
        )
        self._wake.set()
        return lease

    def clear_power_limit(self) -> None:
        self.scheduler.clear_power_limit()
        self._wake.set()

    def request_export(self, power_kw: float, valid_until: datetime) -> Lease:
        """Raises ExportNotSupportedError (maps to rejected) or InvalidRequestError."""
        lease = self.scheduler.request_export(
            power_kw, self._to_monotonic(valid_until), self._clock.monotonic()
        )
        self._wake.set()
        return lease

    def observe_arrival(self, soc_pct: float | None = None) -> None:
        self.scheduler.observe_arrival(self.instant(), soc_pct)

    def vehicle_request(self, vehicle_id: str, refused: str | None) -> None:
        """A vehicle asked for a swap (the swap room tells every request): its first request
        is an arrival for the forecast; refused, it waits (the reserve counts it), until a swap
        starts for it or it has not asked for `WAIT_FORGET_S` (it drove off)."""
        now = self._clock.monotonic()
        for vid, last in list(self._waiting.items()):
            if now - last > self.WAIT_FORGET_S:
                del self._waiting[vid]
        if vehicle_id not in self._waiting:
            self.observe_arrival()
        if refused is None:
            self._waiting.pop(vehicle_id, None)
        else:
            self._waiting[vehicle_id] = now
        self.set_queue(len(self._waiting))

    def set_queue(self, waiting: int) -> None:
        self.scheduler.set_queue(waiting)
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def allocate_now(self) -> Allocation:
        alloc = self.scheduler.allocate(self.instant(), self._read_slots())
        self.allocations += 1
        self._publish(alloc)
        return alloc

    def active_limit(self) -> tuple[float, str, float | None]:
        """The import limit in force now, on this service's clock."""
        return self.scheduler.active_limit(self._clock.monotonic())

    def plan_horizon(self, max_s: float = 6 * 3600.0) -> list[dict[str, float]] | None:
        """The predictive plan's next hours: [{ends_in_s, power_kw}]; None for other
        policies."""
        policy = self.scheduler.policy
        if not isinstance(policy, PredictivePolicy):
            return None
        steps = policy.horizon_kw(self._clock.monotonic())
        return [{"ends_in_s": e, "power_kw": kw} for e, kw in steps if e - max_s < 1e-6]

    async def run(self) -> None:
        if self.solver is None:
            await self._loop()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.solver.run(), name="scheduler.solver")
            await self._loop()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            if self.scheduler.needs_reallocation(self._clock.monotonic()):
                try:
                    self.allocate_now()
                except Exception as e:  # noqa: BLE001 - one bad round must not stop charging control
                    self.errors += 1
                    if self.errors == 1 or self.errors % 100 == 0:
                        log.warning("allocation failed", error=repr(e), errors=self.errors)
            delay = self.scheduler.next_due_s() - self._clock.monotonic()
            if delay <= 0 or self._wake.is_set():
                if delay <= 0 and not self._wake.is_set():
                    # Due again at once only after a failed round: do not spin.
                    delay = self.scheduler.config.period_s
                else:
                    continue
            await self._wait(delay)

    async def _wait(self, delay_s: float) -> None:
        sleeper = asyncio.create_task(self._clock.sleep(delay_s), name="scheduler.sleep")
        waker = asyncio.create_task(self._wake.wait(), name="scheduler.wake")
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)
