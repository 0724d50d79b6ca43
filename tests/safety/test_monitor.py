"""The monitor is itself tested: with one of our fixes disabled (monkeypatch on our own seam,
never pymodbus, python-can or aiomqtt), it catches the outcome the issue observed; with the fix
in place the same run is clean."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.can import session as gbt_session
from edge.telemetry import publisher as publisher_module
from sim.devices.pack import Fault
from tests.safety.harness import Composed, campaign_config, composed

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


async def _charging(c: Composed, slot: str, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while c.monitor.current_a(slot) < 20.0:
            await asyncio.sleep(0.05)


async def _hold(c: Composed, seconds: float) -> None:
    """Let the monitor watch for `seconds`, ending early at the first violation."""
    try:
        async with asyncio.timeout(seconds):
            await c.monitor.failed.wait()
    except TimeoutError:
        pass


def _charging_slot(c: Composed) -> str:
    seated = {s: seat.pack.model.soc_pct for s, seat in c.world.seats.items() if seat.pack}
    return min(seated, key=lambda s: seated[s])


async def _over_voltage_run(tmp_path: Path) -> list[str]:
    async with composed(campaign_config(tmp_path, slots=2), vehicles=False, empty_slots=0) as c:
        slot = _charging_slot(c)
        await _charging(c, slot)
        c.world.seats[slot].inject(Fault.PACK_OVER_VOLTAGE.value, {})
        await _hold(c, 4.0)
        return [v.invariant for v in c.monitor.violations]


async def test_pack_over_voltage_is_stopped_in_time(tmp_path: Path) -> None:
    assert await _over_voltage_run(tmp_path) == []


async def test_monitor_catches_pack_over_voltage_without_the_session_range_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gbt_session.ChargerSession, "_safety_stop", lambda *a, **k: None)
    assert "I1" in await _over_voltage_run(tmp_path)


async def _soc_255_run(tmp_path: Path) -> list[str]:
    async with composed(campaign_config(tmp_path, slots=2), vehicles=False, empty_slots=0) as c:
        slot = _charging_slot(c)
        await _charging(c, slot)
        c.world.seats[slot].inject(Fault.SOC_UNSUPPORTED.value, {})
        await _hold(c, 4.0)
        return [v.invariant for v in c.monitor.violations]


async def test_soc_255_keeps_the_daemon_running(tmp_path: Path) -> None:
    assert await _soc_255_run(tmp_path) == []


async def test_monitor_catches_soc_255_stopping_the_daemon_without_item_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both layers off: the session passes 255 on, the publisher validates strictly.
    monkeypatch.setattr(gbt_session, "SOC_RANGE", (0, 255))
    monkeypatch.setattr(publisher_module, "fit", lambda model, fields: model.model_validate(fields))
    assert "I4" in await _soc_255_run(tmp_path)


async def _refused_off_run(tmp_path: Path) -> list[str]:
    """Outcome 1: the charger refuses the off writes once (exception 6) when its pack goes
    silent (the BMS keeps its contactors closed: only the charger can stop the current)."""
    async with composed(campaign_config(tmp_path, slots=2), vehicles=False, empty_slots=0) as c:
        slot = _charging_slot(c)
        await _charging(c, slot)
        sim = c.world.chargers[c.monitor.charger_of[slot]]
        sim.apply_fault("refuse_write:enable:0", True, None)
        sim.apply_fault("refuse_write:current_limit_a", True, None)
        c.world.seats[slot].inject(Fault.SILENT.value, {})
        await _hold(c, 6.0)
        return [v.invariant for v in c.monitor.violations]


async def test_a_refused_off_write_is_caught_by_no_invariant(tmp_path: Path) -> None:
    assert await _refused_off_run(tmp_path) == []
