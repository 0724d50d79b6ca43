"""Time you can trust: `clock.unsynchronised` is raised while the system clock is not
synchronised (the kernel's status), cleared once it is; the probe is injected."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path

from edge.alarms import CATALOGUE, AlarmManager
from edge.operator.timesync import (
    ALARM,
    SOURCE,
    STA_UNSYNC,
    ClockWatch,
    SyncStatus,
    kernel_sync_status,
    system_sync_status,
)
from tests.doubles import ManualClock
from tests.edge.station_fixtures import mini_config, running_station, wait_for


async def _until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0)


async def test_alarm_raised_while_unsynchronised_and_cleared_once_synced() -> None:
    clock = ManualClock()
    mgr = AlarmManager(clock)
    seen: list[tuple[bool, str]] = []
    mgr.subscribe(lambda ch: seen.append((ch.raised, ch.alarm.detail)))
    answers = iter(
        [
            SyncStatus(False, "kernel clock not synchronised"),
            SyncStatus(False, "kernel clock not synchronised"),
            SyncStatus(True, "kernel clock synchronised"),
            SyncStatus(None, "clock sync status unknown"),
        ]
    )

    def probe() -> SyncStatus:
        status = next(answers, None)
        if status is None:
            raise OSError("probe broke")
        return status

    watch = ClockWatch(mgr.raiser("station"), clock, probe, interval_s=30.0)
    assert CATALOGUE[ALARM].component == "station"
    task = asyncio.create_task(watch.run())
    try:
        await _until(lambda: watch.checks == 1)
        assert mgr.is_active(ALARM, SOURCE) and watch.synchronised is False
        clock.advance(30.0)
        await _until(lambda: watch.checks == 2)
        assert mgr.is_active(ALARM, SOURCE)  # still out of sync: raised once, not again
        clock.advance(30.0)
        await _until(lambda: watch.checks == 3)
        assert not mgr.is_active(ALARM, SOURCE) and watch.synchronised is True
        clock.advance(30.0)  # nothing can tell: unknown time is not trusted time
        await _until(lambda: watch.checks == 4)
        assert mgr.is_active(ALARM, SOURCE) and watch.synchronised is None
        clock.advance(30.0)  # a probe that fails does not stop the watch
        await _until(lambda: watch.checks == 5)
        assert mgr.is_active(ALARM, SOURCE) and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == [
        (True, "kernel clock not synchronised"),
        (False, "kernel clock not synchronised"),
        (True, "clock sync status unknown"),
    ]


def test_kernel_status_agrees_with_adjtimex() -> None:
    """The probe reads the kernel's STA_UNSYNC bit (adjtimex, modes 0, no privileges)."""
    status = kernel_sync_status()
    assert status.synchronised is not None, status.detail

    # An independent read with glibc's full struct timex (64-bit layout).
    class Timex(ctypes.Structure):
        _fields_ = [
            ("modes", ctypes.c_uint),
            ("offset", ctypes.c_long),
            ("freq", ctypes.c_long),
            ("maxerror", ctypes.c_long),
            ("esterror", ctypes.c_long),
            ("status", ctypes.c_int),
            ("constant", ctypes.c_long),
            ("precision", ctypes.c_long),
            ("tolerance", ctypes.c_long),
            ("time_sec", ctypes.c_long),
            ("time_usec", ctypes.c_long),
            ("tick", ctypes.c_long),
            ("pad", ctypes.c_int * 32),
        ]

    tx = Timex()
    rc = ctypes.CDLL(ctypes.util.find_library("c")).adjtimex(ctypes.byref(tx))
    assert rc != -1
    assert tx.tick > 0  # the struct was filled in (ticks of the kernel's clock)
    assert status.synchronised is (rc != 5 and not tx.status & STA_UNSYNC)


def test_timesyncd_flag_is_the_fallback_when_the_kernel_cannot_tell(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"

    def unknown() -> SyncStatus:
        return SyncStatus(None, "adjtimex unavailable")

    def unsynced() -> SyncStatus:
        return SyncStatus(False, "kernel clock not synchronised")

    assert system_sync_status(unknown, flag).synchronised is None
    flag.touch()
    assert system_sync_status(unknown, flag).synchronised is True
    # The kernel's word wins over a stale flag file.
    assert system_sync_status(unsynced, flag).synchronised is False


async def test_the_running_station_says_whether_its_clock_is_synchronised(tmp_path: Path) -> None:
    synced = kernel_sync_status().synchronised
    async with running_station(mini_config(tmp_path, 1)) as w:
        alarms = w.station.alarms
        await wait_for(lambda: alarms.is_active(ALARM, SOURCE) is (synced is not True), 10)
        if synced is not True:
            active = [a for a in alarms.active if a.code == ALARM]
            assert "synchronised" in active[0].detail or "unknown" in active[0].detail
