"""Runs the station's services as named tasks under one TaskGroup.

A device service (one charger, one CAN bus, the broker link) that fails is restarted with capped
backoff and an alarm; it never takes the station down. A core service that fails stops the
daemon (exit 1; systemd restarts it) after the same orderly, bounded safe stop as SIGTERM.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from drivers.core.alarm_sink import AlarmSink
from drivers.core.backoff import Backoff
from drivers.core.clock import Clock
from drivers.core.log import get_logger

log = get_logger("supervisor")


class Kind(StrEnum):
    DEVICE = "device"  # restarted on failure
    CORE = "core"  # failure stops the daemon


class Service(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self) -> None:
        """Run until cancelled."""
        ...

    async def stop(self) -> None:
        """Safe stop (outputs off, robot halted, outbox flushed). Called before cancellation."""
        ...


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class Task:
    """Any coroutine function as a supervised service: the one adapter for services that are not
    written as one (a loop, a link, a room's coordinator). `stop` is its safe stop; `fail_safe`
    what must happen at once when it fails (see `Supervisor.fail_safe`)."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], Coroutine[Any, Any, None]] = _nothing
    fail_safe: Callable[[], Coroutine[Any, Any, None]] | None = None


@dataclass(slots=True)
class _Entry:
    service: Service
    kind: Kind
    restarts: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class CoreServiceFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(
        self,
        clock: Clock,
        alarms: AlarmSink,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self._alarms = alarms
        self._entries: list[_Entry] = []
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.fail_safe_timeout_s = 1.0
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self.failure: BaseException | None = None

    def add(self, service: Service, kind: Kind) -> None:
        self._entries.append(_Entry(service, kind))

    @property
    def names(self) -> list[str]:
        return [e.service.name for e in self._entries]

    def restarts(self, name: str) -> int:
        return next(e.restarts for e in self._entries if e.service.name == name)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self, stop_deadline_s: float) -> None:
        """Start everything, wait for a stop request or a core failure, then stop in reverse."""
        async with asyncio.TaskGroup() as tg:
            for e in self._entries:
                e.task = tg.create_task(self._guard(e), name=e.service.name)
            await asyncio.sleep(0)
            self._started.set()
            await self._stop.wait()
            await self._safe_stop(stop_deadline_s)
            for e in reversed(self._entries):
                if e.task is not None:
                    e.task.cancel()
        if self.failure is not None:
            raise CoreServiceFailed(str(self.failure)) from self.failure

    async def _safe_stop(self, deadline_s: float) -> None:
        """Each service's stop() in reverse start order, all within one deadline."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        for e in reversed(self._entries):
            left = end - loop.time()
            if left <= 0:
                log.error("stop deadline passed", service=e.service.name)
                left = 0.05  # still give the safety writes a chance, briefly
            try:
                async with asyncio.timeout(left):
                    await e.service.stop()
            except TimeoutError:
                log.error("service did not stop in time", service=e.service.name)
            except Exception as exc:  # noqa: BLE001 - one failing stop must not skip the others
                log.error("service stop failed", service=e.service.name, error=repr(exc))

    async def _guard(self, e: _Entry) -> None:
        name = e.service.name
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        failures = 0  # in a row; a run that lasted healthy_after_s starts the count again
        while True:
            started = self._clock.monotonic()
            try:
                await e.service.run()
                if self._stop.is_set():
                    return  # stopped by its stop(): never restarted while the station stops
                if e.kind is Kind.CORE:
                    raise RuntimeError(f"core service {name} returned")
                log.warning("device service returned; restarting", service=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stop.is_set():
                    log.warning("service failed while stopping", service=name, error=repr(exc))
                    await self.fail_safe(e)  # its devices still made safe, just not restarted
                    return
                if e.kind is Kind.CORE:
                    log.critical(
                        "core service failed; stopping the daemon",
                        service=name,
                        error=repr(exc),
                        exc_info=exc,
                    )
                    self.failure = exc
                    self._stop.set()
                    return
                log.error(
                    "device service failed; restarting",
                    service=name,
                    error=repr(exc),
                    retry_in_s=backoff.delay(failures + 1),
                )
                await self.fail_safe(e)
            e.restarts += 1
            self._alarms.raise_alarm("service.restarting", name, f"restart {e.restarts}")
            if self._clock.monotonic() - started >= self.healthy_after_s:
                failures = 0
            failures += 1
            await self._clock.sleep(backoff.delay(failures))
            # Cleared once the next run has lasted a while without failing.
            asyncio.get_running_loop().call_later(
                self.healthy_after_s, self._maybe_clear, e, e.restarts
            )

    async def fail_safe(self, e: _Entry) -> None:
        """Seam (issue 12 item 6): a failed device service makes its devices safe (outputs
        off, or at least watchdogs starved) before the backoff starts, bounded."""
        hook = getattr(e.service, "fail_safe", None)
        if hook is None:
            return
        # Its own task: the failed TaskGroup may leave this task's cancel count raised (Python
        # 3.11), which the Modbus link reads as a cancellation of every request it serves.
        task = asyncio.get_running_loop().create_task(hook(), name=f"{e.service.name}-fail-safe")
        done, _ = await asyncio.wait({task}, timeout=self.fail_safe_timeout_s)
        if not done:
            task.cancel()
            log.error("fail-safe after a failure timed out", service=e.service.name)
        elif task.exception() is not None:
            log.error(
                "fail-safe after a failure failed",
                service=e.service.name,
                error=repr(task.exception()),
            )

    def _maybe_clear(self, e: _Entry, restarts_then: int) -> None:
        if e.restarts == restarts_then and e.task is not None and not e.task.done():
            self._alarms.clear_alarm("service.restarting", e.service.name)
