"""Modbus test rigs: a real pymodbus charger simulator on loopback and a device owner on a
ManualClock (cycles move when the test says so; request timeouts are real but short)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.modbus import ModbusDevice, ModbusLink, ModbusTiming, Snapshot, load_register_map
from drivers.modbus.regmap import RegisterMap
from sim.devices.charger import ChargerSim, ChargerSimSpec, run_charger_sims
from tests.conftest import free_port
from tests.doubles import ManualClock, RecordingAlarmSink

ROOT = Path(__file__).resolve().parents[2]
MAPS = {
    "generic": ROOT / "drivers" / "modbus" / "maps" / "charger-generic.yaml",
    "vendorb": ROOT / "drivers" / "modbus" / "maps" / "charger-vendorb.yaml",
}

# Short timeouts so silence tests run fast; a generous ceiling for a loaded 2-core machine.
FAST = ModbusTiming(
    timeout_floor_s=0.25,
    timeout_max_s=0.5,
    retries=1,
    offline_after_cycles=3,
    backoff_initial_s=0.5,
    backoff_max_s=2.0,
)

# For tests that count requests exactly: a loaded machine must not cause a retry.
STEADY = ModbusTiming(timeout_floor_s=1.0, timeout_max_s=2.0)


async def until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.002)


@dataclass
class Rig:
    dev: ModbusDevice
    sim: ChargerSim
    alarms: RecordingAlarmSink
    clock: ManualClock
    link: ModbusLink
    map: RegisterMap
    sim_clock: ManualClock

    async def step(self, dt: float | None = None) -> Snapshot:
        """Let the device finish what it does, move the clock one tick, return that cycle."""
        await until(lambda: self.clock.sleepers >= 1)
        waiter = asyncio.create_task(self.dev.next_update(), name="test-next-update")
        await asyncio.sleep(0)
        self.clock.advance(self.dev.tick_s if dt is None else dt)
        async with asyncio.timeout(5.0):
            return await waiter

    def reads(self) -> int:
        return sum(n for (fc, _a, _c), n in self.sim.request_log.items() if fc in (1, 2, 3, 4))

    def writes_to(self, point: str) -> int:
        p = self.map.points[point]
        return sum(
            n
            for (fc, a, _c), n in self.sim.request_log.items()
            if fc in (5, 6, 15, 16) and a == p.address
        )


@contextlib.asynccontextmanager
async def charger_rig(
    map_name: str = "generic", timing: ModbusTiming = FAST, alarms: RecordingAlarmSink | None = None
) -> AsyncIterator[Rig]:
    m = load_register_map(MAPS[map_name])
    port = free_port()
    sim_clock = ManualClock()  # never advanced: physics moves only by sim.step()
    async with run_charger_sims([ChargerSimSpec("c1", m, port=port)], clock=sim_clock) as sims:
        clock = ManualClock()
        link = ModbusLink.tcp("127.0.0.1", port, connect_timeout_s=1.0)
        sink = alarms or RecordingAlarmSink()
        dev = ModbusDevice("c1", m, link, unit_id=1, clock=clock, alarms=sink, timing=timing)
        link_task = asyncio.create_task(link.run(), name="test-modbus-link")
        await asyncio.sleep(0)
        first = asyncio.create_task(dev.next_update(), name="test-first-update")
        await asyncio.sleep(0)
        dev_task = asyncio.create_task(dev.run(), name="test-modbus-device")
        try:
            async with asyncio.timeout(5.0):
                await first
            yield Rig(dev, sims["c1"], sink, clock, link, m, sim_clock)
        finally:
            for t in (dev_task, link_task):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
