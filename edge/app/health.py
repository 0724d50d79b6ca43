"""systemd integration without extra packages: sd_notify and a loop-lag-gated watchdog.

READY=1 once services are started (the broker is not waited for), WATCHDOG=1 at half of
WATCHDOG_USEC only while the event loop keeps its timing, STATUS= one-line summaries,
STOPPING=1 on shutdown.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from drivers.core.clock import Clock
from drivers.core.log import get_logger

log = get_logger("health")


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; a no-op when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        if addr:
            # A leading '@' names an abstract socket: the kernel wants a NUL byte there.
            self._addr = b"\0" + addr[1:].encode() if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None or self._addr is None:
            return
        msg = "\n".join(fields)
        try:
            self._sock.sendto(msg.encode(), self._addr)
            self.sent.append(msg)
        except OSError as e:
            log.warning("sd_notify failed", error=str(e))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
    env = environ if environ is not None else dict(os.environ)
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class LoopMonitor:
    """Measures event-loop lag with a short periodic tick; feeds the watchdog only when healthy.

    A blocked loop sends nothing (no task runs), and a loop that runs but lags more than
    `max_lag_s` also stops feeding the watchdog, so systemd restarts a daemon that can no longer
    keep its protocol timing.
    """

    def __init__(
        self,
        notifier: Notifier,
        clock: Clock,
        *,
        tick_s: float = 0.1,
        max_lag_s: float = 1.0,
        watchdog_s: float | None = None,
        status: Callable[[], str] | None = None,
        on_lag: Callable[[bool, float], None] | None = None,
    ) -> None:
        self._notifier = notifier
        self._clock = clock
        self.tick_s = tick_s
        self.max_lag_s = max_lag_s
        self.watchdog_s = watchdog_s
        self._status = status
        self._on_lag = on_lag
        self.last_lag_s = 0.0
        self.max_seen_lag_s = 0.0
        self.watchdog_sent = 0
        self._lagging = False

    async def run(self) -> None:
        next_wd = self._clock.monotonic()
        next_status = self._clock.monotonic()
        while True:
            t0 = self._clock.monotonic()
            await self._clock.sleep(self.tick_s)
            lag = max(0.0, self._clock.monotonic() - t0 - self.tick_s)
            self.last_lag_s = lag
            self.max_seen_lag_s = max(self.max_seen_lag_s, lag)
            lagging = lag > self.max_lag_s
            if lagging != self._lagging:
                self._lagging = lagging
                if self._on_lag is not None:
                    self._on_lag(lagging, lag)
            now = self._clock.monotonic()
            if self.watchdog_s is not None and now >= next_wd and not lagging:
                self._notifier.notify("WATCHDOG=1")
                self.watchdog_sent += 1
                next_wd = now + self.watchdog_s
            if self._status is not None and now >= next_status:
                self._notifier.notify(f"STATUS={self._status()}")
                next_status = now + 10.0
            await asyncio.sleep(0)
