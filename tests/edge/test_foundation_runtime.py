import asyncio
import contextlib
import errno
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import structlog

from drivers.core.clock import SystemClock
from drivers.core.log import get_logger
from edge.alarms import AlarmManager, AlarmOwnershipError, UnknownAlarmError
from edge.app.health import LoopMonitor, Notifier, watchdog_interval_s
from edge.app.logs import configure_logging
from edge.app.supervisor import CoreServiceFailed, Kind, Supervisor
from tests.doubles import ManualClock, RecordingAlarmSink
from tests.edge.foundation_helpers import station_copy


# --- alarms ---------------------------------------------------------------------------------
def test_only_the_raiser_clears(clock: ManualClock) -> None:
    mgr = AlarmManager(clock)
    seen: list[tuple[bool, str]] = []
    mgr.subscribe(lambda ch: seen.append((ch.raised, ch.alarm.code)))
    modbus, slot = mgr.raiser("modbus"), mgr.raiser("slot")
    modbus.raise_alarm("modbus.offline", "ch01")
    modbus.raise_alarm("modbus.offline", "ch01")  # idempotent
    with pytest.raises(AlarmOwnershipError):
        slot.clear_alarm("modbus.offline", "ch01")
    with pytest.raises(AlarmOwnershipError):
        slot.raise_alarm("modbus.offline", "ch02")
    with pytest.raises(UnknownAlarmError):
        modbus.raise_alarm("no.such", "x")
    assert mgr.is_active("modbus.offline", "ch01")
    modbus.clear_alarm("modbus.offline", "ch01")
    assert seen == [(True, "modbus.offline"), (False, "modbus.offline")]
    assert mgr.active == []


# --- sd_notify ------------------------------------------------------------------------------
def _dgram(path: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    return s


def test_notify_filesystem_and_abstract_socket(tmp_path: Path) -> None:
    p = str(tmp_path / "notify.sock")
    with _dgram(p) as rx:
        n = Notifier(p)
        n.notify("READY=1", "STATUS=ok")
        assert rx.recv(4096) == b"READY=1\nSTATUS=ok"
        n.close()
    name = f"swapd-test-{os.getpid()}"
    with _dgram(b"\0" + name.encode()) as rx:
        n = Notifier("@" + name)
        n.notify("WATCHDOG=1")
        assert rx.recv(4096) == b"WATCHDOG=1"
        n.close()
    assert not Notifier("").enabled


def test_watchdog_interval_is_half_of_usec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None


async def test_watchdog_only_while_loop_is_responsive(tmp_path: Path, clock: ManualClock) -> None:
    p = str(tmp_path / "n.sock")
    with _dgram(p) as rx:
        rx.setblocking(False)
        notifier = Notifier(p)
        lag_events: list[bool] = []
        mon = LoopMonitor(
            notifier,
            clock,
            tick_s=0.1,
            max_lag_s=0.5,
            watchdog_s=1.0,
            on_lag=lambda lag, _s: lag_events.append(lag),
        )
        task = asyncio.create_task(mon.run(), name="monitor")
        try:
            for _ in range(30):  # 3 s of healthy ticks
                await asyncio.sleep(0)
                clock.advance(0.1)
                await asyncio.sleep(0)
            healthy = mon.watchdog_sent
            assert healthy >= 2
            for _ in range(5):  # every tick now lags 2 s: no WATCHDOG=1
                await asyncio.sleep(0)
                clock.advance(2.1)
                await asyncio.sleep(0)
            assert mon.watchdog_sent == healthy
            assert lag_events == [True]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            notifier.close()


# --- supervisor -----------------------------------------------------------------------------
class FlakyDevice:
    name = "ch01"

    def __init__(self, fail_times: int) -> None:
        self.fail_times = fail_times
        self.runs = 0
        self.stopped = False
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.fail_times:
            raise ConnectionError("device gone")
        self.running.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped = True


class Recorder:
    def __init__(
        self, name: str, order: list[str], fail: bool = False, hang_stop: bool = False
    ) -> None:
        self.name = name
        self._order = order
        self._fail = fail
        self._hang = hang_stop

    async def run(self) -> None:
        await asyncio.sleep(0)
        if self._fail:
            raise RuntimeError("core broken")
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self._order.append(self.name)
        if self._hang:
            await asyncio.Event().wait()


async def test_device_failure_is_restarted_with_backoff_and_alarm(clock: ManualClock) -> None:
    alarms = RecordingAlarmSink()
    sup = Supervisor(clock, alarms, backoff_initial_s=1.0, backoff_max_s=4.0)
    dev = FlakyDevice(fail_times=3)
    sup.add(dev, Kind.DEVICE)
    task = asyncio.create_task(sup.run(stop_deadline_s=1.0), name="sup")
    delays = []
    for _ in range(3):
        for _ in range(5):
            await asyncio.sleep(0)
        delays.append(clock._sleepers[0][0] - clock.monotonic())
        clock.advance(10)
    async with asyncio.timeout(5):
        await dev.running.wait()
    assert delays == [1.0, 2.0, 4.0]
    assert ("service.restarting", "ch01") in alarms.active
    assert sup.restarts("ch01") == 3
    sup.request_stop()
    async with asyncio.timeout(5):
        await task
    assert dev.stopped


async def test_core_failure_stops_everything_in_reverse_order() -> None:
    order: list[str] = []
    sup = Supervisor(SystemClock(), RecordingAlarmSink())
    for name in ("a", "b"):
        sup.add(Recorder(name, order), Kind.DEVICE)
    sup.add(Recorder("core", order, fail=True), Kind.CORE)
    with pytest.raises(CoreServiceFailed):
        async with asyncio.timeout(5):
            await sup.run(stop_deadline_s=1.0)
    assert order == ["core", "b", "a"]


async def test_stop_is_bounded_by_the_deadline() -> None:
    order: list[str] = []
    sup = Supervisor(SystemClock(), RecordingAlarmSink())
    sup.add(Recorder("outputs", order), Kind.DEVICE)
    sup.add(Recorder("broker", order, hang_stop=True), Kind.DEVICE)
    task = asyncio.create_task(sup.run(stop_deadline_s=0.2), name="sup")
    await sup.wait_started()
    t0 = time.monotonic()
    sup.request_stop()
    async with asyncio.timeout(5):
        await task
    assert order == ["broker", "outputs"]  # the hung broker did not keep the outputs on
    assert time.monotonic() - t0 < 2.0


class SwallowsItsCancellation:
    """A service whose run() returns though it was cancelled (Python 3.11's `wait_for` race
    inside aiomqtt or pymodbus does this)."""

    name = "broker"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    async def stop(self) -> None:
        pass


async def test_a_service_ending_while_the_station_stops_is_not_restarted(
    clock: ManualClock,
) -> None:
    """It was restarted, its backoff sleep kept the supervisor's task group open and
    `swapd run` never exited after SIGTERM (seen under load in the fault campaign)."""
    sup = Supervisor(clock, RecordingAlarmSink())
    svc = SwallowsItsCancellation()
    sup.add(svc, Kind.DEVICE)
    task = asyncio.create_task(sup.run(stop_deadline_s=0.5), name="sup")
    await sup.wait_started()
    sup.request_stop()
    async with asyncio.timeout(5):  # the ManualClock never ends a backoff sleep
        await task
    assert svc.runs == 1


# --- logs -----------------------------------------------------------------------------------
def test_json_logs_with_component_and_rate_limit() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("pymodbus").level)
    configure_logging(stream=buf, json=True)
    try:
        log = get_logger("modbus", device="ch01")
        for _ in range(100):
            log.warning("device offline")
        log.info("hello")
        lines = [orjson.loads(x) for x in buf.getvalue().splitlines()]
        assert [x["event"] for x in lines] == ["device offline", "hello"]
        assert all(x["component"] == "modbus" for x in lines)
        lib = logging.getLogger("edge.telemetry.link")
        for _ in range(50):
            lib.warning("broker unreachable")
        lib_lines = [orjson.loads(x) for x in buf.getvalue().splitlines()[2:]]
        assert len(lib_lines) == 1 and lib_lines[0]["component"] == "telemetry"
    finally:
        structlog.reset_defaults()
        root.handlers[:], lvl, pm = saved
        root.setLevel(lvl)
        logging.getLogger("pymodbus").setLevel(pm)


class _FillingDisk(io.StringIO):
    full = False

    def write(self, s: str) -> int:
        if self.full:
            raise OSError(errno.EFBIG, "File too large")
        return super().write(s)


def test_a_log_write_that_fails_loses_the_line_not_the_caller() -> None:
    # A full disk under the log file: the callers (any service's error path) must go on.
    buf = _FillingDisk()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("pymodbus").level)
    configure_logging(stream=buf, json=True)
    try:
        log = get_logger("telemetry")
        log.info("before")
        buf.full = True
        log.warning("broker lost")
        log.info("during")
        logging.getLogger("aiomqtt").error("library line")
        buf.full = False
        log.info("after")
        lines = [orjson.loads(x) for x in buf.getvalue().splitlines()]
        assert [x["event"] for x in lines] == ["before", "log lines lost", "after"]
        assert lines[1]["lost"] == 3
    finally:
        structlog.reset_defaults()
        root.handlers[:], lvl, pm = saved
        root.setLevel(lvl)
        logging.getLogger("pymodbus").setLevel(pm)


# --- the daemon as systemd runs it ----------------------------------------------------------
def test_daemon_ready_watchdog_and_sigterm(tmp_path: Path) -> None:
    cfg = station_copy(tmp_path)
    sock_path = str(tmp_path / "notify.sock")
    with _dgram(sock_path) as rx:
        env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
        env.pop("WATCHDOG_PID", None)
        rx.settimeout(30)  # start-up on a loaded CI machine; the bench measures the real figure
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            got: list[str] = []
            while "READY=1" not in "\n".join(got):
                got.append(rx.recv(4096).decode())
            ready_s = time.monotonic() - t0
            watchdogs = 0
            while watchdogs < 3:
                if "WATCHDOG=1" in rx.recv(4096).decode():
                    watchdogs += 1
            proc.send_signal(signal.SIGTERM)
            t1 = time.monotonic()
            rc = proc.wait(timeout=10)
            stopped_s = time.monotonic() - t1
            msgs = []
            rx.setblocking(False)
            try:
                while True:
                    msgs.append(rx.recv(4096).decode())
            except BlockingIOError:
                pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out, err = proc.communicate()
    assert rc == 0, err
    assert any("STOPPING=1" in m for m in msgs)
    assert stopped_s < 5.0  # the config's stop deadline
    assert ready_s < 10.0
    assert out == b""  # stdout is for results only; logs go to stderr
    assert b'"component":"station"' in err


def test_a_stop_that_hangs_dumps_the_stacks_and_exits(tmp_path: Path) -> None:
    """A daemon whose stop never ends (here `Station.stop` does nothing) exits 1 on its own at
    the stop deadline + 10 s, every thread's stack in its log: systemd's SIGKILL at
    TimeoutStopSec would leave no trace of what it waited for."""
    cfg = station_copy(tmp_path, {"stop_deadline_s: 5": "stop_deadline_s: 1"})
    sock_path = str(tmp_path / "notify.sock")
    script = (
        "import sys\n"
        "from edge.app.station import Station\n"
        "Station.stop = lambda self: None\n"
        "from edge.app.daemon import run_daemon\n"
        f"sys.exit(run_daemon({str(cfg)!r}))\n"
    )
    with _dgram(sock_path) as rx:
        rx.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path}
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            got: list[str] = []
            while "READY=1" not in "\n".join(got):
                got.append(rx.recv(4096).decode())
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            rc = proc.wait(timeout=30)
            took_s = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _, err = proc.communicate()
    assert rc == 1
    assert 10.5 <= took_s < 20.0  # 1 s deadline + 10 s, before TimeoutStopSec=20
    assert b"asyncio tasks:" in err  # first the tasks' stacks, the loop still turning
    assert b"Timeout (0:00:11)!" in err and b"most recent call first" in err
