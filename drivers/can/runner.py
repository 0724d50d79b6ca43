"""Binds a sans-I/O core (charger session or simulated BMS) to a bus: frames in, timers, frames out.

`CoreRunner.run()` sleeps until the core's next deadline (or until a frame or command changes
it), calls `tick(now)`, and sends every CanFrame the core returns through `send`. Non-frame
outputs (typed events) go to `on_event`. `ChargerLink` is the ready-made pairing of a
`BusOwner` and a `ChargerSession` for one slot: two named tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from drivers.can.bus import BusOwner
from drivers.can.codec import CanFrame
from drivers.can.config import CanBusConfig
from drivers.can.events import ChargerFault, FrameRejected, SessionEvent, StopReason
from drivers.can.session import (
    ChargerLimits,
    ChargerMeasurements,
    ChargerSession,
    PackFieldLimits,
    SessionOutput,
    SessionTimers,
)
from drivers.core.alarm_sink import AlarmSink
from drivers.core.clock import Clock, SystemClock


class FrameCore(Protocol):
    def handle_frame(self, frame: CanFrame, now: float) -> Sequence[Any]: ...

    def tick(self, now: float) -> Sequence[Any]: ...

    def next_deadline(self) -> float | None: ...


class CoreRunner:
    """Drives one core in real time. Frames from the bus arrive through `on_frame`."""

    def __init__(
        self,
        core: FrameCore,
        send: Callable[[CanFrame], bool],
        *,
        clock: Clock | None = None,
        on_event: Callable[[Any], None] | None = None,
        on_rejected: Callable[[str], None] | None = None,
        idle_s: float = 1.0,
    ) -> None:
        self.core = core
        self._send = send
        self._clock = clock or SystemClock()
        self._on_event = on_event
        self._on_rejected = on_rejected
        self._idle_s = idle_s
        self._wake = asyncio.Event()
        self._planned: float | None = None

    def on_frame(self, frame: CanFrame) -> None:
        self.dispatch(self.core.handle_frame(frame, self._clock.monotonic()))

    def dispatch(self, outputs: Sequence[Any]) -> None:
        """Send the frames and hand on the events of a core call; re-plan the next wake-up
        only when the core now needs one earlier than planned (saves a task switch per frame)."""
        self._emit(outputs)
        nd = self.core.next_deadline()
        if nd is not None and (self._planned is None or nd < self._planned):
            self._wake.set()

    def _emit(self, outputs: Sequence[Any]) -> None:
        for o in outputs:
            if isinstance(o, CanFrame):
                self._send(o)
            elif isinstance(o, FrameRejected):
                if self._on_rejected is not None:
                    self._on_rejected(o.kind)
                if self._on_event is not None:
                    self._on_event(o)
            elif self._on_event is not None:
                self._on_event(o)

    @property
    def now(self) -> float:
        return self._clock.monotonic()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = self._clock.monotonic()
            self._emit(self.core.tick(now))
            deadline = self.core.next_deadline()
            delay = self._idle_s if deadline is None else max(0.0, deadline - now)
            self._planned = now + delay
            handle = loop.call_later(delay, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                handle.cancel()


class ChargerLink:
    """One slot's GB/T 27930 link: a bus owner plus the charger session, run as two tasks.

    Commands (`start`, `stop`, `update_measurements`, `update_limits`) act at once; events go to
    `on_event` in the event loop. Bus counters: `link.bus.counters`.
    """

    def __init__(
        self,
        name: str,
        config: CanBusConfig,
        limits: ChargerLimits,
        on_event: Callable[[SessionEvent], None],
        *,
        alarms: AlarmSink | None = None,
        clock: Clock | None = None,
        charger_number: int = 1,
        timers: SessionTimers | None = None,
        field_limits: PackFieldLimits | None = None,
    ) -> None:
        self.name = name
        self.clock = clock or SystemClock()
        self.session = ChargerSession(
            limits,
            charger_number=charger_number,
            timers=timers,
            wall_time=self.clock.now,
            field_limits=field_limits,
        )
        self.bus = BusOwner(name, config, alarms=alarms, clock=self.clock)
        self.runner = CoreRunner(
            self.session,
            self.bus.send,
            clock=self.clock,
            on_event=on_event,
            on_rejected=self.bus.count_rejected,
        )
        self.bus.set_handler(self.runner.on_frame)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.bus.run(), name=f"can-bus-{self.name}")
            tg.create_task(self.runner.run(), name=f"gbt-session-{self.name}")

    def _do(self, outputs: list[SessionOutput]) -> None:
        self.runner.dispatch(outputs)

    def start(self) -> None:
        self._do(self.session.start(self.clock.monotonic()))

    def stop(
        self,
        reason: StopReason = StopReason.MANUAL,
        faults: tuple[ChargerFault, ...] = (),
        detail: str = "",
    ) -> None:
        self._do(self.session.stop(self.clock.monotonic(), reason, faults, detail))

    def set_output_ready(self, ready: bool) -> None:
        self._do(self.session.set_output_ready(ready, self.clock.monotonic()))

    def update_measurements(self, m: ChargerMeasurements) -> None:
        self.session.update_measurements(m)

    def update_limits(self, limits: ChargerLimits) -> None:
        self.session.update_limits(limits)
