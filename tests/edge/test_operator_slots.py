"""A slot out of service and per-slot latch resets, through the command service of a running
station (judged by what the simulated charger and pack see)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.command_types import LOCAL, SIM, Rejected
from edge.operator.commands import OutOfService
from sim.devices.pack import BmsPhase
from tests.edge.station_fixtures import mini_config, running_station, wait_for


def _enabled(w: object, charger_id: str) -> bool:
    return bool(w.chargers[charger_id].get("enable"))  # type: ignore[attr-defined]


async def test_disable_slot_output_off_no_pack_in_or_out_kept_across_restarts(
    tmp_path: Path,
) -> None:
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        st, svc = w.station, w.station.command_service
        await wait_for(lambda: _enabled(w, "ch01") and _enabled(w, "ch02"), 30)
        # Local by default: the remote policy refuses it.
        with pytest.raises(Rejected) as info:
            await svc.execute("disable_slot", {"slot_id": "s01"}, SIM)
        assert info.value.code == "not_allowed"
        out = await svc.execute("disable_slot", {"slot_id": "s01", "reason": "worn"}, LOCAL)
        assert out == {"slot_id": "s01", "in_service": False}
        await wait_for(lambda: not _enabled(w, "ch01"), 5)
        await wait_for(lambda: w.packs["s01"].core.phase is not BmsPhase.CHARGING, 5)
        assert _enabled(w, "ch02")  # the other slot charges on
        views = {v.slot_id: v for v in st.swap.coordinator.slots.slot_views()}
        assert views["s01"].available is False and views["s02"].available is True
        assert st.slots["s01"].in_service is False
        # Kept on disk: a restarted station starts with it out of service.
        assert OutOfService(tmp_path / "state" / "slots-out-of-service.json").slots == {
            "s01": "worn"
        }
        # A latch reset needs a latched slot; unknown slots are refused.
        with pytest.raises(Rejected, match="out of service"):
            await svc.execute("reset_slot", {"slot_id": "s01"}, LOCAL)
        with pytest.raises(Rejected, match="not latched"):
            await svc.execute("reset_slot", {"slot_id": "s02"}, LOCAL)
        with pytest.raises(Rejected, match="no slot"):
            await svc.execute("reset_slot", {"slot_id": "s09"}, LOCAL)
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        views = {v.slot_id: v for v in st.swap.coordinator.slots.slot_views()}
        assert st.slots["s01"].in_service and views["s01"].available
        assert OutOfService(tmp_path / "state" / "slots-out-of-service.json").slots == {}


async def test_enable_slot_starts_a_new_session_for_the_docked_pack(tmp_path: Path) -> None:
    """Out of service ended the pack's GB/T session (CST, BSD/CSD); back in service, the
    charger begins a new one: the pack sees CHM again, goes through CRM and charges."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        svc, pack = w.station.command_service, w.packs["s01"].core
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        handshakes, ended = pack.counters.handshakes, pack.counters.sessions_ended
        await svc.execute("disable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: pack.counters.sessions_ended > ended, 15)
        assert pack.phase is BmsPhase.ENDED and not _enabled(w, "ch01")
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: pack.counters.handshakes > handshakes, 15)
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)


async def test_enable_slot_while_its_session_is_still_ending(tmp_path: Path) -> None:
    """Enabled again before the stopped session has ended: the new session starts once the
    old one has ended (never a CHM in the middle of the stop)."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        svc, pack = w.station.command_service, w.packs["s01"].core
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        handshakes, ended = pack.counters.handshakes, pack.counters.sessions_ended
        await svc.execute("disable_slot", {"slot_id": "s01"}, LOCAL)
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: pack.counters.sessions_ended > ended, 15)
        await wait_for(lambda: pack.counters.handshakes > handshakes, 15)
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        assert pack.counters.sessions_ended == ended + 1
