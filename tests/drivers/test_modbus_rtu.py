"""Modbus RTU for real: two chargers (two vendors) on one RS-485 line, here a socat pty pair,
polled through one link that serialises every request."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.core.clock import SystemClock
from drivers.modbus import DeviceState, ModbusNetwork, ModbusRtuEndpoint, Quality
from sim.devices.charger import run_charger_sims, spec_from_endpoint
from tests.doubles import RecordingAlarmSink
from tests.drivers.modbus_fixtures import MAPS, until


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat not installed: `make test` installs it with apt-get")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        yield str(a), str(b)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_two_units_on_one_serial_line(pty_pair: tuple[str, str], tmp_path: Path) -> None:
    server_end, client_end = pty_pair
    timing = {
        "timeout_floor_s": 0.2,
        "timeout_max_s": 0.4,
        "offline_after_cycles": 2,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 0.4,
        "poll_periods_s": {"fast": 0.05},
        "parity": "N",  # a pty refuses parity settings
    }
    endpoints = [
        ModbusRtuEndpoint(
            id="c1", serial_port=client_end, unit_id=1, map=str(MAPS["generic"]), **timing
        ),
        ModbusRtuEndpoint(
            id="c2", serial_port=client_end, unit_id=2, map=str(MAPS["vendorb"]), **timing
        ),
    ]
    # the simulators come from the same endpoint configs, on the other end of the line
    specs = [spec_from_endpoint(e, tmp_path, serial_port=server_end) for e in endpoints]
    assert [(s.unit_id, s.parity) for s in specs] == [(1, "N"), (2, "N")]
    alarms = RecordingAlarmSink()
    net = ModbusNetwork(endpoints, config_dir=tmp_path, clock=SystemClock(), alarms=alarms)
    assert len(net.links) == 1  # one owner for the line
    c1, c2 = net.devices["c1"], net.devices["c2"]
    async with run_charger_sims(specs) as sims:
        runner = asyncio.create_task(net.run(), name="test-modbus-network")
        try:
            async with asyncio.timeout(10):
                await c1.online.wait()
                await c2.online.wait()
            await asyncio.gather(
                c1.write("voltage_setpoint_v", 410.0),
                c2.write("voltage_setpoint_v", 390.0),
                c1.write("enable", True),
                c2.write("enable", True),
            )
            assert sims["c1"].get("voltage_setpoint_v") == 410.0
            assert sims["c2"].get("voltage_setpoint_v") == 390.0
            assert sims["c2"].get("enable") is True
            snap = await c2.next_update()
            assert snap["state"].quality is Quality.GOOD
            # one unit goes silent: it goes offline, its neighbour on the line carries on
            sims["c2"].faults.silent = True
            await until(lambda: c2.state is DeviceState.OFFLINE, 10)
            assert alarms.active == {("modbus.offline", "c2")}
            cycles = c1.counters.cycles
            await until(lambda: c1.counters.cycles >= cycles + 3, 10)
            await until(
                lambda: c1.state is DeviceState.ONLINE and c1.snapshot()["output_voltage_v"].good,
                10,
            )
            assert c1.counters.offline_events == 0
            sims["c2"].faults.silent = False
            await until(lambda: c2.state is DeviceState.ONLINE, 10)
            # line noise on unit 1's answers: CRC failures are dropped, the line carries on
            errors = c1.counters.timeouts + c1.counters.malformed
            sims["c1"].faults.garbage = True
            await until(lambda: c1.counters.timeouts + c1.counters.malformed > errors, 10)
            sims["c1"].faults.garbage = False
            await until(lambda: c1.snapshot()["output_voltage_v"].good, 10)
            await until(lambda: c2.state is DeviceState.ONLINE, 10)
            assert alarms.active == set()
            assert sims["c2"].requests[16] >= 1  # the setpoint (f32, FC16) was rewritten
            assert sum(sims["c1"].requests.values()) > 10
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner
