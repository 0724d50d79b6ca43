"""Composition root: builds the whole station from its config and runs it.

Nothing else constructs services; rooms get what they need (clock, alarm raiser, state) here.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.clock import Clock
from edge.alarms import AlarmManager
from edge.config import StationConfig
from edge.health import LoopMonitor, Notifier, watchdog_interval_s
from edge.logs import get_logger
from edge.state import GridState, StationState
from edge.supervisor import Kind, Supervisor

log = get_logger("station")


class MonitorService:
    """The event-loop monitor as a core service: it feeds systemd's watchdog."""

    name = "health"

    def __init__(self, monitor: LoopMonitor) -> None:
        self.monitor = monitor

    async def run(self) -> None:
        await self.monitor.run()

    async def stop(self) -> None:
        return None


@dataclass(slots=True)
class Station:
    config: StationConfig
    clock: Clock
    alarms: AlarmManager
    state: StationState
    supervisor: Supervisor
    notifier: Notifier
    monitor: LoopMonitor

    async def run(self) -> None:
        """Run until `stop()` is called; raises CoreServiceFailed when a core service fails."""
        run = self.supervisor.run(self.config.station.stop_deadline_s)
        import asyncio

        task = asyncio.ensure_future(run)
        try:
            await asyncio.wait(
                [task, asyncio.ensure_future(self.supervisor.wait_started())],
                return_when="FIRST_COMPLETED",
            )
            if not task.done():
                self.notifier.notify("READY=1", f"STATUS={self.state.summary()}")
                log.info(
                    "station ready", station=self.config.station.id, services=self.supervisor.names
                )
            await task
        finally:
            if not task.done():
                task.cancel()

    def stop(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        self.supervisor.request_stop()


def build_station(config: StationConfig, clock: Clock, notifier: Notifier | None = None) -> Station:
    alarms = AlarmManager(clock)
    state = StationState(
        station_id=config.station.id,
        grid=GridState(cap_kw=config.grid.cap_kw, limit_kw=config.grid.cap_kw),
        alarms=alarms,
    )
    station_raiser = alarms.raiser("station")
    supervisor = Supervisor(clock, station_raiser)
    notifier = notifier or Notifier()

    def on_lag(lagging: bool, lag_s: float) -> None:
        if lagging:
            station_raiser.raise_alarm(
                "station.loop_lag", "event_loop", f"lag {lag_s * 1000:.0f} ms"
            )
        else:
            station_raiser.clear_alarm("station.loop_lag", "event_loop")

    monitor = LoopMonitor(
        notifier, clock, watchdog_s=watchdog_interval_s(), status=state.summary, on_lag=on_lag
    )
    supervisor.add(MonitorService(monitor), Kind.CORE)
    return Station(config, clock, alarms, state, supervisor, notifier, monitor)
