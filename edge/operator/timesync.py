"""Time you can trust: command expiry, dedupe and tariffs use the wall clock, so the station
raises `clock.unsynchronised` while the kernel does not hold its clock synchronised.

The kernel's status is the one every NTP client keeps (chrony, ntpd, systemd-timesyncd): the
STA_UNSYNC bit of adjtimex(2), read without privileges (modes 0 changes nothing). When the
kernel cannot be asked, systemd-timesyncd's flag file is the fallback; when nothing can tell,
the alarm stays raised (unknown time is not trusted time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.core.alarm_sink import AlarmSink
from drivers.core.clock import Clock
from drivers.core.log import get_logger

log = get_logger("timesync")

ALARM = "clock.unsynchronised"
SOURCE = "system_clock"
TIME_ERROR = 5  # adjtimex's answer while the clock is unsynchronised
STA_UNSYNC = 0x0040
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


@dataclass(frozen=True, slots=True)
class SyncStatus:
    synchronised: bool | None  # None: nothing could tell
    detail: str


Probe = Callable[[], SyncStatus]


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h); `status` sits before any time_t, so its offset is the
    # same on 32- and 64-bit time ABIs. The tail is padded generously.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_long * 32),
    ]


def kernel_sync_status() -> SyncStatus:
    """The kernel's NTP sync status (adjtimex with modes 0)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as e:
        return SyncStatus(None, f"adjtimex unavailable: {e}")
    tx = _Timex()
    rc = adjtimex(ctypes.byref(tx))
    if rc == -1:
        return SyncStatus(None, f"adjtimex: {os.strerror(ctypes.get_errno())}")
    if rc == TIME_ERROR or tx.status & STA_UNSYNC:
        return SyncStatus(
            False,
            f"kernel clock not synchronised (status 0x{tx.status:x}, "
            f"max error {tx.maxerror / 1e6:.1f} s)",
        )
    return SyncStatus(True, f"kernel clock synchronised (max error {tx.maxerror / 1e3:.0f} ms)")


def system_sync_status(
    kernel: Probe = kernel_sync_status, flag: Path = TIMESYNCD_FLAG
) -> SyncStatus:
    """The kernel's word; when it cannot be asked, systemd-timesyncd's flag file."""
    status = kernel()
    if status.synchronised is not None:
        return status
    if flag.exists():
        return SyncStatus(True, f"{flag} present ({status.detail})")
    return SyncStatus(None, f"clock sync status unknown: {status.detail}")


class ClockWatch:
    """A device service: checks the sync status every `interval_s`, raises the alarm while the
    clock is not (known to be) synchronised and clears it once it is."""

    name = "clock"

    def __init__(
        self,
        alarms: AlarmSink,
        clock: Clock,
        probe: Probe = system_sync_status,
        *,
        interval_s: float = 30.0,
    ) -> None:
        self.alarms = alarms
        self.clock = clock
        self.probe = probe
        self.interval_s = interval_s
        self.synchronised: bool | None = None
        self.checks = 0

    def check(self) -> SyncStatus:
        try:
            status = self.probe()
        except Exception as e:  # noqa: BLE001 - a failing probe means unknown, not a crash
            status = SyncStatus(None, f"clock sync probe failed: {e!r}")
        self.checks += 1
        ok = status.synchronised is True
        if ok != (self.synchronised is True) or self.checks == 1:
            say = log.info if ok else log.warning
            say("clock sync status", synchronised=ok, detail=status.detail)
        self.synchronised = status.synchronised
        if ok:
            self.alarms.clear_alarm(ALARM, SOURCE)
        else:
            self.alarms.raise_alarm(ALARM, SOURCE, status.detail)
        return status

    async def run(self) -> None:
        while True:
            self.check()
            await self.clock.sleep(self.interval_s)

    async def stop(self) -> None:
        return None
