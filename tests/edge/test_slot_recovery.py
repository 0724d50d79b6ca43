"""A charger that goes offline and comes back: the slot holds its output off during the outage and,
once the charger reads good again, begins a new GB/T session for the pack still docked. Judged
from what the simulated charger (its own power stage and registers) and pack (its handshake
count, its BCL request) see."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge.config import load_config
from edge.slot.core import SlotState
from sim.devices.charger import ChargerSim, run_charger_sims, spec_from_endpoint
from sim.devices.pack import BmsPhase, Fault
from tests.edge.station_fixtures import World, mini_config, running_station, wait_for

pytestmark = pytest.mark.timeout(120)

OFF_A = 5.0


def delivering(sim: ChargerSim) -> float:
    return sim.physics.output_current_a


def stage_off(sim: ChargerSim) -> bool:
    """The charger's own power stage is off (its contactor, not the daemon's idea of it)."""
    return not sim.physics.enabled and delivering(sim) <= OFF_A


async def charging(w: World, charger: str = "ch01") -> None:
    sim = w.chargers[charger]
    await wait_for(lambda: bool(sim.get("enable")) and delivering(sim) > 10.0, 30)


@pytest.mark.parametrize("outage", ["silent", "exception"])
async def test_a_charger_back_online_restarts_the_session_and_charging_resumes(
    tmp_path: Path, outage: str
) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        sim, pack, st = w.chargers["ch01"], w.packs["s01"].core, w.station
        slot = st.slots["s01"]
        await charging(w)
        handshakes = pack.counters.handshakes
        # timeouts (silence) or exception 4 on every request: no good answer either way
        sim.apply_fault(outage, True, 4 if outage == "exception" else None)
        await wait_for(lambda: st.alarms.is_active("modbus.offline", "ch01"), 5)
        assert slot.core.state is SlotState.UNAVAILABLE
        # starved, the charger's watchdog (5 s) switches it off by itself
        await wait_for(lambda: stage_off(sim), 8)
        # CST: the pack's session ends (BST/BSD) while the charger is away
        await wait_for(lambda: pack.phase is BmsPhase.ENDED, 15)
        for _ in range(20):  # and it stays off for the rest of the outage
            assert stage_off(sim)
            await asyncio.sleep(0.05)
        assert pack.counters.handshakes == handshakes
        sim.apply_fault(outage, False)
        await wait_for(lambda: not st.alarms.is_active("modbus.offline", "ch01"), 10)
        await wait_for(lambda: pack.counters.handshakes > handshakes, 15)
        await charging(w)
        assert pack.phase is BmsPhase.CHARGING
        assert not st.alarms.is_active("slot.unavailable", "s01")
        assert not st.alarms.is_active("charger.offline", "s01")
        # under the pack's BCL request and the scheduler's grant, as read from the charger
        for _ in range(20):
            limit = sim.get("current_limit_a")
            assert isinstance(limit, int | float)
            bcl = pack.model.max_current_a
            v = max(sim.physics.output_voltage_v, 1.0)
            grant_a = slot.core.grant_kw * 1000.0 / v
            assert limit <= bcl + 1.0, (limit, bcl)
            assert delivering(sim) <= min(bcl, grant_a) * 1.05 + 1.0, (
                delivering(sim),
                bcl,
                grant_a,
            )
            await asyncio.sleep(0.05)


async def test_a_pack_fault_latch_survives_a_charger_outage(tmp_path: Path) -> None:
    """Only the charger-offline cause clears when the charger returns: a pack latched by an
    over-temperature fault gets no new session and no output."""
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        sim, pack, st = w.chargers["ch01"], w.packs["s01"].core, w.station
        slot = st.slots["s01"]
        await charging(w)
        w.packs["s01"].inject(Fault.OVER_TEMPERATURE)
        await wait_for(lambda: slot.core.state is SlotState.FAULTED, 10)
        await wait_for(lambda: pack.phase is BmsPhase.ENDED, 10)
        handshakes = pack.counters.handshakes
        sim.apply_fault("silent", True)
        await wait_for(lambda: st.alarms.is_active("modbus.offline", "ch01"), 5)
        sim.apply_fault("silent", False)
        await wait_for(lambda: not st.alarms.is_active("charger.offline", "s01"), 10)
        await wait_for(lambda: slot.output_off_confirmed, 5)
        for _ in range(40):
            assert stage_off(sim) and not sim.get("enable")
            await asyncio.sleep(0.05)
        assert pack.counters.handshakes == handshakes
        assert slot.core.state is SlotState.FAULTED
        assert st.alarms.is_active("pack.over_temperature", "s01")


async def test_a_bms_lost_latch_survives_a_charger_outage(tmp_path: Path) -> None:
    """A BMS-lost latch stays for `reset_slot` (the documented design), charger outage or not."""
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        sim, pack, st = w.chargers["ch01"], w.packs["s01"], w.station
        slot = st.slots["s01"]
        await charging(w)
        pack.inject(Fault.SILENT)
        await wait_for(lambda: slot.core.state is SlotState.UNAVAILABLE, 60)
        pack.clear(Fault.SILENT)
        pack.replug()
        handshakes = pack.core.counters.handshakes
        sim.apply_fault("silent", True)
        await wait_for(lambda: st.alarms.is_active("modbus.offline", "ch01"), 5)
        sim.apply_fault("silent", False)
        await wait_for(lambda: not st.alarms.is_active("charger.offline", "s01"), 10)
        await wait_for(lambda: slot.output_off_confirmed, 5)
        for _ in range(40):
            assert stage_off(sim)
            await asyncio.sleep(0.05)
        assert pack.core.counters.handshakes == handshakes
        assert slot.core.state is SlotState.UNAVAILABLE
        assert st.alarms.is_active("slot.unavailable", "s01")


async def test_a_charger_that_powers_off_and_reboots_is_offline_then_charges_again(
    tmp_path: Path,
) -> None:
    """The commonest outage in the field: the charger loses power (its port refuses every
    connection), then boots with its registers at their defaults. Offline and held off while it
    is gone; back, a new session for the pack before the charger delivers again."""
    path = mini_config(tmp_path, 1)
    cfg = load_config(path)
    spec = spec_from_endpoint(cfg.chargers[0], path.parent)
    async with running_station(path, soc_pct=40.0, charger_sims=False) as w:
        pack, st = w.packs["s01"].core, w.station
        slot = st.slots["s01"]
        async with run_charger_sims([spec], speed=50.0) as sims:
            sim = sims["ch01"]
            await wait_for(lambda: bool(sim.get("enable")) and delivering(sim) > 10.0, 30)
            handshakes = pack.counters.handshakes
        # powered off: connections refused
        await wait_for(lambda: st.alarms.is_active("modbus.offline", "ch01"), 5)
        assert slot.core.state is SlotState.UNAVAILABLE
        assert not st.network.devices["ch01"].watchdog_feeding
        await wait_for(lambda: pack.phase is BmsPhase.ENDED, 15)
        async with run_charger_sims([spec], speed=50.0) as sims:  # booted, registers reset
            sim = sims["ch01"]
            seen_on_before_handshake: list[float] = []

            async def watch() -> None:
                while pack.counters.handshakes == handshakes:
                    if sim.get("enable") or delivering(sim) > OFF_A:
                        seen_on_before_handshake.append(delivering(sim))
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            try:
                await wait_for(lambda: not st.alarms.is_active("modbus.offline", "ch01"), 10)
                await wait_for(lambda: pack.counters.handshakes > handshakes, 15)
            finally:
                watcher.cancel()
            assert seen_on_before_handshake == []
            await wait_for(lambda: bool(sim.get("enable")) and delivering(sim) > 10.0, 30)
            assert pack.phase is BmsPhase.CHARGING
            assert not st.alarms.is_active("charger.offline", "s01")
