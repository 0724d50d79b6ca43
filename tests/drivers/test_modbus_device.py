"""Device owner against a real pymodbus charger simulator on loopback TCP. The same tests run
against both charger maps: a new vendor is a file, not code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog.testing

from drivers.core.clock import SystemClock
from drivers.modbus import (
    DeviceOfflineError,
    DeviceState,
    ModbusCommError,
    ModbusDevice,
    ModbusLink,
    ModbusNetwork,
    ModbusTcpEndpoint,
    ModbusTiming,
    PointError,
    Quality,
    WriteRangeError,
    WriteVerifyError,
    load_register_map,
    plan_map,
)
from sim.devices.charger import ChargerSimSpec, run_charger_sims
from tests.conftest import free_port
from tests.doubles import RecordingAlarmSink
from tests.drivers.modbus_fixtures import FAST, MAPS, STEADY, charger_rig, until

BOTH = pytest.mark.parametrize("map_name", ["generic", "vendorb"])


@BOTH
async def test_reads_are_coalesced_into_planned_blocks(map_name: str) -> None:
    async with charger_rig(map_name, timing=STEADY) as rig:
        plan = plan_map(rig.map)
        for _ in range(9):
            await rig.step()
        # 10 cycles: cycle 1 reads every group; then only "fast" (control every 1 s, slow 10 s)
        n_all = sum(len(b) for b in plan.values())
        n_fast = len(plan["fast"])
        assert rig.reads() == n_all + 9 * n_fast
        assert n_fast == 1
        planned = {(b.table, b.start, b.count) for bs in plan.values() for b in bs}
        fc_table = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
        seen = {(fc_table[fc], a, c) for (fc, a, c) in rig.sim.request_log if fc in fc_table}
        assert seen == planned  # no per-point reads, nothing outside the plan
        # one more second: control falls due once, the watchdog is fed once more
        for _ in range(10):
            await rig.step()
        assert rig.reads() == n_all + 19 * n_fast + len(plan["control"])
        assert rig.writes_to("watchdog") == 2
        assert rig.dev.counters.cycles == 20


@BOTH
async def test_setpoints_drive_the_simulated_output(map_name: str) -> None:
    async with charger_rig(map_name) as rig:
        await rig.dev.write("voltage_setpoint_v", 400.0)
        await rig.dev.write("current_limit_a", 80.0)
        await rig.dev.write("enable", True)
        assert rig.dev.desired == {
            "voltage_setpoint_v": 400.0,
            "current_limit_a": 80.0,
            "enable": True,
        }
        rig.sim.step(2.0)  # physics: ramps 100 A/s to the 80 A limit
        snap = await rig.step()
        assert snap.state is DeviceState.ONLINE
        assert snap["output_current_a"].quality is Quality.GOOD
        assert snap.good("output_current_a") == pytest.approx(80.0, abs=0.1)
        assert snap.good("output_voltage_v") == pytest.approx(
            rig.sim.physics.output_voltage_v, abs=0.1
        )
        assert snap.good("state") == "charging"
        assert snap.good("fault_bits") == ()
        assert "output_current_a" in snap.fresh and "max_voltage_v" not in snap.fresh
        assert snap.good("max_current_a") == pytest.approx(250.0)
        # a device fault bit reaches the station by its canonical name
        rig.sim.apply_fault("bit:over_temperature")
        rig.sim.step(0.1)
        snap = await rig.step()
        assert snap.good("state") == "fault"
        assert snap.good("fault_bits") == ("over_temperature",)
        assert snap.good("output_current_a") == 0.0


@BOTH
async def test_write_checks_range_and_access_before_sending(map_name: str) -> None:
    async with charger_rig(map_name, timing=STEADY) as rig:
        before = sum(rig.sim.requests.values())
        with pytest.raises(WriteRangeError):
            await rig.dev.write("voltage_setpoint_v", 1200.0)  # above the map max
        with pytest.raises(WriteRangeError):
            await rig.dev.write("current_limit_a", -1.0)
        with pytest.raises(WriteRangeError):
            await rig.dev.write("enable", 2)
        with pytest.raises(WriteRangeError):
            await rig.dev.write("current_limit_a", "lots")
        with pytest.raises(PointError):
            await rig.dev.write("output_voltage_v", 1.0)  # read-only
        with pytest.raises(PointError):
            await rig.dev.write("watchdog", 5)  # the owner feeds it
        with pytest.raises(PointError):
            await rig.dev.write("no_such_point", 5)
        assert sum(rig.sim.requests.values()) == before
        assert rig.dev.desired == {}
        # an unverified write (momentary commands): one request, no read-back, not remembered
        await rig.dev.write("current_limit_a", 5.0, verify=False)
        assert sum(rig.sim.requests.values()) == before + 1
        assert rig.sim.get("current_limit_a") == 5.0 and rig.dev.desired == {}


async def test_offline_backoff_and_recovery_rewrites_setpoints_before_clearing() -> None:
    seen_at_clear: dict[str, object] = {}

    class Sink(RecordingAlarmSink):
        def clear_alarm(self, code: str, source: str) -> None:
            if code == "modbus.offline":
                seen_at_clear.update(
                    voltage=rig.sim.get("voltage_setpoint_v"), enable=rig.sim.get("enable")
                )
            super().clear_alarm(code, source)

    async with charger_rig("generic", alarms=Sink()) as rig:
        await rig.dev.write("voltage_setpoint_v", 380.0)
        await rig.dev.write("enable", True)
        rig.sim.faults.silent = True
        states = []
        for _ in range(FAST.offline_after_cycles):
            states.append((await rig.step()).state)
        assert states[:-1] == [DeviceState.DEGRADED] * (FAST.offline_after_cycles - 1)
        assert states[-1] is DeviceState.OFFLINE
        snap = rig.dev.snapshot()
        assert all(v.quality is Quality.STALE for v in snap.values())
        assert snap["voltage_setpoint_v"].value == 380.0  # kept for display, marked stale
        assert rig.alarms.active == {("modbus.offline", "c1")}
        with pytest.raises(DeviceOfflineError):
            await rig.dev.write("current_limit_a", 50.0)  # remembered for the reconnect
        # the safety logic wants the output off when the charger returns: remembered too
        with pytest.raises(DeviceOfflineError):
            await rig.dev.write("enable", False)
        # capped exponential backoff between probes: 0.5, 1, 2, 2 s
        probes = []
        for delay in (0.5, 1.0, 2.0, 2.0):
            await until(lambda: rig.clock.sleepers >= 1)
            n = sum(rig.sim.requests.values())
            rig.clock.advance(delay - 0.01)
            await asyncio.sleep(0.02)
            assert sum(rig.sim.requests.values()) == n  # not yet
            rig.clock.advance(0.01)
            await until(lambda n=n: sum(rig.sim.requests.values()) > n)
            probes.append(delay)
        assert rig.dev.state is DeviceState.OFFLINE
        assert rig.alarms.history.count(("raised", "modbus.offline", "c1")) == 1
        # the device comes back having forgotten its setpoints (a reboot)
        rig.sim.words["holding"].update({100: 0, 101: 0, 102: 1})  # came back enabled
        rig.sim.faults.silent = False
        await until(lambda: rig.clock.sleepers >= 1)
        rig.clock.advance(2.0)
        await until(lambda: rig.dev.state is DeviceState.ONLINE)
        assert seen_at_clear == {"voltage": 380.0, "enable": False}
        assert rig.sim.get("current_limit_a") == 50.0
        assert rig.alarms.active == set()
        assert rig.dev.counters.restores == 1
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.GOOD


async def test_offline_within_3_s_of_silence_with_default_timing() -> None:
    t = ModbusTiming()
    bound = t.offline_after_cycles * (t.retries + 1) * t.timeout_max_s + 0.1
    assert bound <= 3.0  # the defaults' worst case, by construction
    m = load_register_map(MAPS["generic"])
    port = free_port()
    async with run_charger_sims([ChargerSimSpec("c1", m, port=port)]) as sims:
        link = ModbusLink.tcp("127.0.0.1", port)
        alarms = RecordingAlarmSink()
        dev = ModbusDevice("c1", m, link, unit_id=1, clock=SystemClock(), alarms=alarms)
        async with asyncio.TaskGroup() as tg:
            lt = tg.create_task(link.run(), name="test-link")
            dt = tg.create_task(dev.run(), name="test-device")
            async with asyncio.timeout(5):
                await dev.online.wait()
            sims["c1"].faults.silent = True
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with asyncio.timeout(3.0):
                await until(lambda: dev.state is DeviceState.OFFLINE, timeout_s=3.0)
            assert loop.time() - t0 < 3.0
            assert alarms.active == {("modbus.offline", "c1")}
            dt.cancel()
            lt.cancel()


@BOTH
async def test_invalid_raw_values_are_flagged_not_passed_on(map_name: str) -> None:
    async with charger_rig(map_name) as rig:
        rig.sim.apply_fault("invalid_values")
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.INVALID
        assert snap["output_voltage_v"].value is None
        assert snap["temperature_c"].quality is Quality.INVALID
        assert snap["state"].quality is Quality.GOOD
        assert rig.dev.counters.invalid_values >= 2
        assert ("modbus.invalid_value", "c1") in rig.alarms.active
        with pytest.raises(PointError):
            snap.good("output_voltage_v")
        rig.sim.apply_fault("invalid_values", False)
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.GOOD
        assert ("modbus.invalid_value", "c1") not in rig.alarms.active
        assert rig.dev.state is DeviceState.ONLINE


@BOTH
async def test_failed_write_verification_raises_and_alarms(map_name: str) -> None:
    async with charger_rig(map_name, timing=STEADY) as rig:
        rig.sim.apply_fault("ignore_writes")
        with pytest.raises(WriteVerifyError):
            await rig.dev.write("current_limit_a", 42.0)
        assert rig.writes_to("current_limit_a") == 2  # the write and one retry
        assert rig.dev.counters.write_verify_failures == 1
        assert ("modbus.write_failed", "c1") in rig.alarms.active
        rig.sim.apply_fault("ignore_writes", False)
        await rig.dev.write("current_limit_a", 42.0)
        assert rig.sim.get("current_limit_a") == 42.0
        assert ("modbus.write_failed", "c1") not in rig.alarms.active


@BOTH
async def test_exception_on_every_request_is_offline_like_silence(map_name: str) -> None:
    """Issue 12 outcome 3: liveness is judged by good answers. A charger that answers every
    request with an exception goes offline after N cycles with the same alarm as silence, its
    watchdog is no longer fed, and it comes back only with a good read."""
    async with charger_rig(map_name) as rig:
        rig.sim.apply_fault("exception", True, 4)  # device failure, on every request
        feeds = rig.dev.counters.watchdog_feeds
        for _ in range(FAST.offline_after_cycles):
            snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.STALE
        assert rig.dev.counters.exception_responses >= FAST.offline_after_cycles
        assert rig.dev.state is DeviceState.OFFLINE
        assert ("modbus.offline", "c1") in rig.alarms.active
        assert rig.dev.counters.watchdog_feeds == feeds  # no good read: nothing fed
        rig.sim.apply_fault("exception", False)
        await until(lambda: rig.clock.sleepers >= 1)
        rig.clock.advance(FAST.backoff_max_s)  # the probe
        await until(lambda: rig.dev.state is DeviceState.ONLINE)
        assert ("modbus.offline", "c1") not in rig.alarms.active
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.GOOD


@BOTH
async def test_one_exception_cycle_is_survived(map_name: str) -> None:
    async with charger_rig(map_name) as rig:
        rig.sim.apply_fault("exception", True, 6)  # device busy, briefly
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.STALE
        assert rig.dev.state is DeviceState.DEGRADED
        with pytest.raises(WriteVerifyError):
            await rig.dev.write("current_limit_a", 10.0)
        rig.sim.apply_fault("exception", False)
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.GOOD
        assert rig.dev.state is DeviceState.ONLINE


@BOTH
@pytest.mark.parametrize("fault", ["short_answers", "garbage"])
async def test_malformed_answers_are_dropped_and_the_loop_survives(
    map_name: str, fault: str
) -> None:
    async with charger_rig(map_name) as rig:
        rig.sim.apply_fault(fault)
        snap = await rig.step()
        assert snap["output_voltage_v"].quality is Quality.STALE
        c = rig.dev.counters
        if fault == "short_answers":
            assert c.malformed >= 1
        else:
            assert c.malformed + c.timeouts >= 1
        rig.sim.apply_fault(fault, False)
        for _ in range(FAST.offline_after_cycles + 1):
            snap = await rig.step()
            if snap.state is DeviceState.ONLINE and snap["output_voltage_v"].good:
                break
        else:
            raise AssertionError(f"not recovered: {rig.dev.state} {c}")


async def test_watchdog_is_fed_until_told_to_stop_then_the_charger_stops() -> None:
    async with charger_rig("generic", timing=STEADY) as rig:
        await rig.dev.write("voltage_setpoint_v", 400.0)
        await rig.dev.write("current_limit_a", 50.0)
        await rig.dev.write("enable", True)
        for _ in range(25):
            await rig.step()
        assert rig.writes_to("watchdog") == 3  # t = 0, 1, 2 s (period 1 s)
        assert rig.sim.get("watchdog") == 3
        rig.sim_clock.advance(4.0)  # device-side time; its timeout is 5 s
        for _ in range(10):
            await rig.step()
        rig.sim.step(1.0)
        assert not rig.sim.watchdog_expired
        assert rig.sim.physics.output_current_a > 0
        rig.dev.stop_watchdog()
        assert not rig.dev.watchdog_feeding
        for _ in range(30):
            await rig.step()
        assert rig.writes_to("watchdog") == 4
        rig.sim_clock.advance(6.0)
        rig.sim.step(0.1)
        assert rig.sim.watchdog_expired
        assert rig.sim.physics.output_current_a == 0.0
        for _ in range(10):
            snap = await rig.step()
        assert snap.good("enable") is False  # the charger dropped its own enable
        assert "watchdog_expired" in snap.good("fault_bits")
        assert snap.good("output_current_a") == 0.0
        rig.dev.resume_watchdog()
        await rig.step()
        assert rig.writes_to("watchdog") == 5
        rig.sim.step(0.1)
        assert not rig.sim.watchdog_expired


async def test_updates_iterator_yields_each_cycle() -> None:
    async with charger_rig("generic") as rig:
        got: list[int] = []

        async def consume() -> None:
            async for snap in rig.dev.updates():
                got.append(snap.cycle)
                if len(got) == 3:
                    return

        task = asyncio.create_task(consume(), name="test-consumer")
        await asyncio.sleep(0)
        for _ in range(3):
            await rig.step()
        async with asyncio.timeout(5):
            await task
        assert got == sorted(got) and len(set(got)) == 3


async def test_connection_refused_goes_offline_and_recovers_when_the_device_appears() -> None:
    m = load_register_map(MAPS["generic"])
    port = free_port()
    timing = ModbusTiming(
        timeout_floor_s=0.05,
        timeout_max_s=0.2,
        offline_after_cycles=2,
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
    )
    link = ModbusLink.tcp("127.0.0.1", port, connect_timeout_s=0.5)
    alarms = RecordingAlarmSink()
    dev = ModbusDevice("c9", m, link, unit_id=1, clock=SystemClock(), alarms=alarms, timing=timing)
    async with asyncio.TaskGroup() as tg:
        lt = tg.create_task(link.run(), name="test-link")
        dt = tg.create_task(dev.run(), name="test-device")
        await until(lambda: dev.state is DeviceState.OFFLINE)
        assert dev.counters.connection_errors >= 2
        async with run_charger_sims([ChargerSimSpec("c9", m, port=port)]):
            await until(lambda: dev.state is DeviceState.ONLINE)
            assert alarms.active == set()
            assert alarms.history == [
                ("raised", "modbus.offline", "c9"),
                ("cleared", "modbus.offline", "c9"),
            ]
            dt.cancel()
            lt.cancel()


async def test_slow_answers_stretch_the_adaptive_timeout_and_values_stay_good() -> None:
    timing = ModbusTiming(timeout_floor_s=0.25, timeout_max_s=1.0)
    async with charger_rig("generic", timing=timing) as rig:
        assert rig.dev.timeout_s == 0.25
        rig.sim.apply_fault("slow", True, 0.08)
        snap = await rig.step()
        assert snap["output_voltage_v"].good
        assert rig.dev.timeout_s > 0.25  # 4 x the measured latency
        assert rig.dev.timeout_s <= 1.0
        rig.sim.apply_fault("slow", False)
        for _ in range(3):
            snap = await rig.step()
        assert snap["output_voltage_v"].good and rig.dev.state is DeviceState.ONLINE


async def test_gateway_with_two_unit_ids_shares_one_connection(tmp_path: Path) -> None:
    port = free_port()
    specs = [
        ChargerSimSpec("a", MAPS["generic"], unit_id=1, port=port),
        ChargerSimSpec("b", MAPS["vendorb"], unit_id=2, port=port),
    ]
    eps = [
        ModbusTcpEndpoint(id="a", host="127.0.0.1", port=port, unit_id=1, map=str(MAPS["generic"])),
        ModbusTcpEndpoint(id="b", host="127.0.0.1", port=port, unit_id=2, map=str(MAPS["vendorb"])),
    ]
    net = ModbusNetwork(eps, config_dir=tmp_path, clock=SystemClock(), alarms=RecordingAlarmSink())
    assert list(net.links) == [f"tcp://127.0.0.1:{port}"]
    async with run_charger_sims(specs) as sims:
        runner = asyncio.create_task(net.run(), name="test-network")
        try:
            async with asyncio.timeout(5):
                await net.devices["a"].online.wait()
                await net.devices["b"].online.wait()
            await net.devices["b"].write("current_limit_a", 12.5)
            assert sims["b"].get("current_limit_a") == 12.5
            assert sims["a"].get("current_limit_a") == 0.0
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner


async def test_an_unexpected_error_in_a_cycle_is_logged_and_polling_goes_on() -> None:
    with structlog.testing.capture_logs() as logs:
        async with charger_rig("generic") as rig:
            original = rig.dev._store
            calls = {"n": 0}

            def broken_once(*args: object) -> None:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("decoder bug")
                original(*args)  # type: ignore[arg-type]

            rig.dev._store = broken_once  # type: ignore[method-assign]
            await until(lambda: rig.clock.sleepers >= 1)
            rig.clock.advance(rig.dev.tick_s)
            await until(lambda: rig.dev.counters.internal_errors == 1)
            snap = await rig.step()
            assert snap["output_voltage_v"].good
    failed = [e for e in logs if e["event"] == "cycle failed unexpectedly"]
    assert failed and failed[0]["log_level"] == "error" and failed[0]["exc_info"]


async def test_write_to_a_silent_device_is_a_comm_error_and_a_refused_restore_still_comes_online() -> (
    None
):
    async with charger_rig("generic") as rig:
        await rig.dev.write("current_limit_a", 20.0)
        rig.sim.faults.silent = True
        with pytest.raises(ModbusCommError) as ei:
            await rig.dev.write("current_limit_a", 30.0)
        assert not isinstance(ei.value, WriteVerifyError)
        assert ("modbus.write_failed", "c1") not in rig.alarms.active
        for _ in range(FAST.offline_after_cycles):
            await rig.step()
        assert rig.dev.state is DeviceState.OFFLINE
        # it comes back answering but refusing writes: online, with write_failed, not offline
        rig.sim.faults.silent = False
        rig.sim.faults.ignore_writes = True
        await until(lambda: rig.clock.sleepers >= 1)
        rig.clock.advance(FAST.backoff_initial_s)
        await until(lambda: rig.dev.state is DeviceState.ONLINE)
        assert rig.alarms.active == {("modbus.write_failed", "c1")}


async def test_setpoints_asked_before_the_first_connection_are_written_when_it_comes() -> None:
    m = load_register_map(MAPS["vendorb"])
    port = free_port()
    link = ModbusLink.tcp("127.0.0.1", port)
    dev = ModbusDevice(
        "c1", m, link, unit_id=1, clock=SystemClock(), alarms=RecordingAlarmSink(), timing=FAST
    )
    with pytest.raises(DeviceOfflineError):
        await dev.write("current_limit_a", 33.0)
    async with (
        run_charger_sims([ChargerSimSpec("c1", m, port=port)]) as sims,
        asyncio.TaskGroup() as tg,
    ):
        lt = tg.create_task(link.run(), name="test-link")
        dt = tg.create_task(dev.run(), name="test-device")
        async with asyncio.timeout(5):
            await dev.online.wait()
        assert sims["c1"].get("current_limit_a") == 33.0
        assert dev.snapshot()["current_limit_a"].value == 33.0
        dt.cancel()
        lt.cancel()
