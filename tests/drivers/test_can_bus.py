"""Bus owner + charger session against simulated packs over python-can's virtual bus."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import can
import pytest
from pydantic import ValidationError

from drivers.can.bus import BusOwner, BusState
from drivers.can.codec import CanFrame, MalformedFrameError, UnknownFrameError
from drivers.can.config import CanBusConfig
from drivers.can.events import (
    ChargeRequest,
    FrameRejected,
    PackIdentified,
    Phase,
    PhaseChanged,
    SessionEvent,
    SessionStopped,
    StopReason,
)
from drivers.can.runner import ChargerLink
from drivers.can.session import ChargerLimits, ChargerMeasurements
from sim.devices.pack import BmsCore, Fault, PackModel, PackSpec, SimPack
from tests.doubles import RecordingAlarmSink

LIMITS = ChargerLimits(max_voltage_v=750.0, min_voltage_v=150.0, max_current_a=250.0)
_chan = itertools.count()


def vconf() -> CanBusConfig:
    return CanBusConfig(interface="virtual", channel=f"test-can-{next(_chan)}")


class Slot:
    """One slot: charger link + simulated pack on the same bus, events recorded."""

    def __init__(self, name: str, config: CanBusConfig, soc_pct: float = 40.0) -> None:
        self.events: list[SessionEvent] = []
        self.changed = asyncio.Event()
        self.link = ChargerLink(name, config, LIMITS, self._on_event)
        self.pack = SimPack.on_bus(
            name, BmsCore(PackModel(PackSpec(soc_pct=soc_pct, serial=7))), config
        )

    def _on_event(self, ev: SessionEvent) -> None:
        self.events.append(ev)
        if isinstance(ev, ChargeRequest):
            # An ideal charger: deliver the request, report it in CCS.
            self.link.update_measurements(
                ChargerMeasurements(self.pack.core.model.voltage_v, ev.current_a)
            )
        self.changed.set()

    async def wait_for(self, pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():
                self.changed.clear()
                await self.changed.wait()

    def phase(self) -> Phase:
        return self.link.session.phase

    def phases(self) -> list[Phase]:
        return [e.new for e in self.events if isinstance(e, PhaseChanged)]


@asynccontextmanager
async def running(*slots: Slot) -> AsyncIterator[None]:
    tasks = []
    for s in slots:
        tasks.append(asyncio.create_task(s.link.run(), name=f"link-{s.link.name}"))
        tasks.append(asyncio.create_task(s.pack.run(), name=f"pack-{s.link.name}"))
    try:
        async with asyncio.timeout(5):
            for s in slots:
                await s.link.bus.opened.wait()
                await s.pack.transport.opened.wait()  # type: ignore[attr-defined]
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_full_session_over_virtual_bus() -> None:
    slot = Slot("s1", vconf())
    async with running(slot):
        slot.link.start()
        await slot.wait_for(lambda: slot.phase() is Phase.CHARGING)
        ident = next(e for e in slot.events if isinstance(e, PackIdentified))
        assert ident.pack_serial == 7
        await slot.wait_for(lambda: slot.pack.core.counters.ccs_seen >= 5)
        slot.link.stop()
        await slot.wait_for(lambda: slot.phase() is Phase.ENDED)
    assert slot.phases() == [
        Phase.HANDSHAKE,
        Phase.IDENTIFICATION,
        Phase.PARAMETERS,
        Phase.CHARGING,
        Phase.STOPPING,
        Phase.STATISTICS,
        Phase.ENDED,
    ]
    c = slot.link.bus.counters
    assert c.rx > 20 and c.tx > 20 and c.unknown == 0 and c.malformed == 0 and c.dropped == 0
    assert slot.pack.core.counters.sessions_ended == 1
    assert slot.pack.core.model.soc_pct > 40.0  # the pack charged from the CCS current


async def test_malformed_traffic_counted_dropped_session_goes_on_other_slot_untouched() -> None:
    bad, good = Slot("bad", vconf()), Slot("good", vconf())
    async with running(bad, good):
        bad.link.start()
        good.link.start()
        await bad.wait_for(lambda: bad.phase() is Phase.CHARGING)
        await good.wait_for(lambda: good.phase() is Phase.CHARGING)
        bad.pack.inject(Fault.GARBAGE)
        bad.pack.inject(Fault.WRONG_DLC)
        await bad.wait_for(lambda: bad.link.bus.counters.malformed >= 3)
        bad.pack.clear(Fault.WRONG_DLC)
        n = sum(isinstance(e, ChargeRequest) for e in bad.events)
        await bad.wait_for(lambda: sum(isinstance(e, ChargeRequest) for e in bad.events) > n + 3)
        await bad.wait_for(lambda: bad.link.bus.counters.unknown >= 3)
        assert bad.phase() is Phase.CHARGING
        assert good.phase() is Phase.CHARGING
    assert any(isinstance(e, FrameRejected) for e in bad.events)
    assert good.link.bus.counters.unknown == 0 and good.link.bus.counters.malformed == 0
    assert not any(isinstance(e, (FrameRejected, SessionStopped)) for e in good.events)


async def test_pack_fault_stops_session_over_bus() -> None:
    slot = Slot("f", vconf())
    async with running(slot):
        slot.link.start()
        await slot.wait_for(lambda: slot.phase() is Phase.CHARGING)
        slot.pack.inject(Fault.INSULATION)
        await slot.wait_for(lambda: any(isinstance(e, SessionStopped) for e in slot.events))
        await slot.wait_for(lambda: slot.phase() is Phase.ENDED)
    stopped = next(e for e in slot.events if isinstance(e, SessionStopped))
    assert stopped.reason is StopReason.PACK_FAULT


async def test_handler_errors_are_counted_and_the_bus_goes_on() -> None:
    conf = vconf()
    seen: list[CanFrame] = []

    def handler(frame: CanFrame) -> None:
        b = frame.data[0]
        if b == 1:
            raise UnknownFrameError("x")
        if b == 2:
            raise MalformedFrameError("y")
        if b == 3:
            raise RuntimeError("handler bug")
        seen.append(frame)

    owner = BusOwner("h", conf, handler)
    task = asyncio.create_task(owner.run(), name="bus-h")
    peer = can.Bus(interface="virtual", channel=conf.channel)
    try:
        async with asyncio.timeout(5):
            await owner.opened.wait()
            for b in (1, 2, 3, 4):
                peer.send(can.Message(arbitration_id=0x181056F4, data=[b], is_extended_id=True))
            peer.send(can.Message(arbitration_id=0x123, data=[0], is_extended_id=False))
            while owner.counters.rx < 5:
                await asyncio.sleep(0.01)
        assert (owner.counters.unknown, owner.counters.malformed, owner.counters.errors) == (
            2,
            1,
            1,
        )
        assert len(seen) == 1
        assert owner.send(CanFrame(0x1812F456, b"\x00" * 8))
        async with asyncio.timeout(5):
            msg = await asyncio.to_thread(peer.recv, 2.0)
        assert msg is not None and msg.arbitration_id == 0x1812F456
    finally:
        peer.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert owner.state is BusState.STOPPED
    assert not owner.send(CanFrame(0x1812F456, b"\x00"))
    assert owner.counters.dropped == 1


async def test_open_failure_raises_alarm_and_backs_off() -> None:
    alarms = RecordingAlarmSink()
    # socketcan on an interface that does not exist: the open fails.
    owner = BusOwner("nope", CanBusConfig(interface="socketcan", channel="nocan9"), alarms=alarms)
    task = asyncio.create_task(owner.run(), name="bus-nope")
    try:
        async with asyncio.timeout(5):
            while owner.counters.errors < 2:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ("can.bus_error", "nope") in alarms.active
    assert "open failed" in owner.last_error


def test_bus_config_model() -> None:
    CanBusConfig(interface="slcan", channel="socket://127.0.0.1:7000")
    CanBusConfig(interface="socketcan", channel="vcan0")
    with pytest.raises(ValidationError):
        CanBusConfig(interface="slcan", channel="tcp://127.0.0.1:7000")
    with pytest.raises(ValidationError):
        CanBusConfig(interface="virtual", channel="x", bitrat=250000)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CanBusConfig(interface="kvaser", channel="0")  # type: ignore[arg-type]
