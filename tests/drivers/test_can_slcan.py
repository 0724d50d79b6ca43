"""SLCAN over TCP: python-can's slcan interface against our server, in-process and across
processes (simulated pack in a subprocess), plus bus loss -> alarm -> reopen."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import can

from drivers.can.bus import BusOwner, BusState
from drivers.can.codec import CanFrame
from drivers.can.config import CanBusConfig
from drivers.can.events import ChargeRequest, Phase, PhaseChanged, SessionEvent
from drivers.can.runner import ChargerLink
from drivers.can.session import ChargerLimits, ChargerMeasurements
from drivers.core.backoff import Backoff
from sim.devices.slcan_server import SlcanPort
from tests.conftest import free_port
from tests.doubles import RecordingAlarmSink

LIMITS = ChargerLimits(max_voltage_v=750.0, min_voltage_v=150.0, max_current_a=250.0)


async def until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.01)


async def test_python_can_slcan_client_round_trip() -> None:
    got: list[CanFrame] = []
    port = SlcanPort(0, handler=got.append)
    task = asyncio.create_task(port.run(), name="slcan-port")
    try:
        await port.listening.wait()
        bus = await asyncio.to_thread(
            can.Bus,
            interface="slcan",
            channel=f"socket://127.0.0.1:{port.port}",
            bitrate=250_000,
            sleep_after_open=0,
        )
        try:
            bus.send(
                can.Message(arbitration_id=0x1826F456, data=b"\x01\x01\x00", is_extended_id=True)
            )
            await until(lambda: bool(got))
            assert got == [CanFrame(0x1826F456, b"\x01\x01\x00")]
            assert port.send(CanFrame(0x182756F4, bytes.fromhex("A510")))
            msg = None
            for _ in range(20):  # skip the CR acks of O/C/S
                msg = await asyncio.to_thread(bus.recv, 0.5)
                if msg is not None:
                    break
            assert msg is not None
            assert (msg.arbitration_id, bytes(msg.data), msg.is_extended_id) == (
                0x182756F4,
                bytes.fromhex("A510"),
                True,
            )
        finally:
            bus.shutdown()
        assert port._command(b"T1234") == b"\a" and port.bad_lines == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_full_session_across_processes_over_slcan() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.devices.slcan_server", "--count", "1", "--soc", "40"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.startswith("READY "), line
        port = int(line.split()[1])
        events: list[SessionEvent] = []
        link: ChargerLink

        def on_event(ev: SessionEvent) -> None:
            events.append(ev)
            if isinstance(ev, ChargeRequest):
                link.update_measurements(ChargerMeasurements(380.0, ev.current_a))

        conf = CanBusConfig(interface="slcan", channel=f"socket://127.0.0.1:{port}")
        link = ChargerLink("x1", conf, LIMITS, on_event)
        task = asyncio.create_task(link.run(), name="link-x1")
        try:
            await asyncio.wait_for(link.bus.opened.wait(), 10)
            link.start()
            await until(lambda: link.session.phase is Phase.CHARGING, 15)
            await until(lambda: sum(isinstance(e, ChargeRequest) for e in events) > 10)
            link.stop()
            await until(lambda: link.session.phase is Phase.ENDED, 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        phases = [e.new for e in events if isinstance(e, PhaseChanged)]
        assert phases == [
            Phase.HANDSHAKE,
            Phase.IDENTIFICATION,
            Phase.PARAMETERS,
            Phase.CHARGING,
            Phase.STOPPING,
            Phase.STATISTICS,
            Phase.ENDED,
        ]
        c = link.bus.counters
        assert c.unknown == 0 and c.malformed == 0 and c.rx > 20
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_lost_connection_raises_alarm_and_reopens_with_backoff() -> None:
    alarms = RecordingAlarmSink()
    port_no = free_port()
    got: list[CanFrame] = []
    port = SlcanPort(port_no, handler=got.append)
    ptask = asyncio.create_task(port.run(), name="slcan-1")
    conf = CanBusConfig(interface="slcan", channel=f"socket://127.0.0.1:{port_no}")
    owner = BusOwner("slot-9", conf, alarms=alarms, backoff=Backoff(0.05, 0.2, 2.0))
    otask = asyncio.create_task(owner.run(), name="bus-slot-9")
    try:
        await asyncio.wait_for(owner.opened.wait(), 10)
        assert owner.send(CanFrame(0x1826F456, b"\x01\x01\x00"))
        await until(lambda: bool(got))
        # The simulator goes away: the owner sees the broken link, alarms, backs off.
        ptask.cancel()
        await asyncio.gather(ptask, return_exceptions=True)
        await until(lambda: ("can.bus_error", "slot-9") in alarms.active)
        await until(lambda: owner.counters.errors >= 2)  # the reopen attempts fail too
        assert owner.state in (BusState.BACKOFF, BusState.OPENING)
        assert not owner.send(CanFrame(0x1826F456, b"\x01\x01\x00"))
        # It comes back on the same port: reopened, alarm cleared, traffic flows.
        port2 = SlcanPort(port_no, handler=got.append)
        ptask = asyncio.create_task(port2.run(), name="slcan-2")
        await asyncio.wait_for(owner.opened.wait(), 10)
        await until(lambda: ("can.bus_error", "slot-9") not in alarms.active)
        n = len(got)
        assert owner.send(CanFrame(0x1826F456, b"\x01\x01\x00"))
        await until(lambda: len(got) > n)
        assert owner.counters.reopens >= 1
    finally:
        for t in (otask, ptask):
            t.cancel()
        await asyncio.gather(otask, ptask, return_exceptions=True)


async def test_frames_arriving_in_one_segment_are_all_delivered_at_once() -> None:
    port = SlcanPort(0)
    ptask = asyncio.create_task(port.run(), name="slcan-burst")
    got: list[CanFrame] = []
    try:
        await port.listening.wait()
        conf = CanBusConfig(interface="slcan", channel=f"socket://127.0.0.1:{port.port}")
        owner = BusOwner("burst", conf, got.append)
        otask = asyncio.create_task(owner.run(), name="bus-burst")
        try:
            await asyncio.wait_for(owner.opened.wait(), 10)
            await until(lambda: port._open)
            frames = [CanFrame(0x181056F4, bytes([i, 0x0F, 0xD0, 0x07, 0x02])) for i in range(50)]
            for f in frames:  # written back to back: they share TCP segments
                port.send(f)
            await until(lambda: len(got) == 50, 5)
            assert got == frames
            assert owner.counters.rx == 50
        finally:
            otask.cancel()
            await asyncio.gather(otask, return_exceptions=True)
    finally:
        ptask.cancel()
        await asyncio.gather(ptask, return_exceptions=True)


async def test_cross_process_fault_injection_bcl_timeout_and_rehandshake() -> None:
    from drivers.can.events import Timeout

    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.devices.slcan_server", "--count", "1", "--control-stdin"],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        port = int(line.split()[1])
        events: list[SessionEvent] = []
        conf = CanBusConfig(interface="slcan", channel=f"socket://127.0.0.1:{port}")
        link = ChargerLink("x2", conf, LIMITS, events.append)
        task = asyncio.create_task(link.run(), name="link-x2")
        try:
            await asyncio.wait_for(link.bus.opened.wait(), 10)
            link.start()
            await until(lambda: link.session.phase is Phase.CHARGING, 15)
            proc.stdin.write("0 bcl_stops\n")
            proc.stdin.flush()
            await until(lambda: any(isinstance(e, Timeout) for e in events), 10)
            to = next(e for e in events if isinstance(e, Timeout))
            assert to.missing == "BCL" and to.will_retry
            proc.stdin.write("0 bcl_stops clear\n")
            proc.stdin.flush()
            await until(
                lambda: link.session.phase is Phase.CHARGING and link.session.rehandshakes == 1, 15
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
