"""The composed daemon against simulated chargers (Modbus TCP), packs (GB/T 27930 on virtual CAN
buses) and the robot PLC: slot control, scheduler grants and the safety rules end to end."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.modbus.device import DeviceState
from edge.slot.core import SlotState
from edge.telemetry.models import SetPowerLimitParams
from sim.devices.pack import BmsPhase, Fault
from tests.edge.station_fixtures import mini_config, running_station, wait_for

pytestmark = pytest.mark.timeout(90)


def output_enabled(world: object, charger_id: str) -> bool:
    return bool(world.chargers[charger_id].get("enable"))  # type: ignore[attr-defined]


async def test_packs_are_identified_and_charged_under_the_scheduler(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        s1, s2 = w.station.slots["s01"], w.station.slots["s02"]
        await wait_for(
            lambda: s1.core.state is SlotState.CHARGING and s2.core.state is SlotState.CHARGING
        )
        snap = s1.snapshot()
        assert snap.pack_id == "SIMB-000003E8"
        assert s1.pack_type() == "LFP"
        await wait_for(lambda: (s1.snapshot().current_a or 0) > 10 and output_enabled(w, "ch01"))
        # The grant reached the slot, and the setpoint never exceeds it (grant is grid-side).
        alloc = w.station.scheduler.last
        assert alloc is not None and alloc.total_kw <= alloc.limit_kw + 0.1
        soc0 = s1.snapshot().soc_pct or 0.0
        await wait_for(lambda: (s1.snapshot().soc_pct or 0.0) > soc0 + 1.0)
        # Pack data reaches the station snapshot with current positive into the pack.
        assert (s1.snapshot().current_a or 0) > 0
        assert w.station.publisher.publishes > 0


async def test_dispatch_limit_reduces_grants_at_once_and_is_held_to_the_cap(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        st = w.station
        await wait_for(lambda: all(s.core.state is SlotState.CHARGING for s in st.slots.values()))
        until = datetime.now(UTC) + timedelta(minutes=5)
        await st.commands.set_power_limit(SetPowerLimitParams(power_kw=20.0, valid_until=until))
        await wait_for(
            lambda: st.scheduler.last is not None and st.scheduler.last.limit_kw == 20.0, 2.0
        )
        assert st.scheduler.last is not None and st.scheduler.last.total_kw <= 20.0 + 0.1
        # A lease above the connection cap is held to the cap.
        await st.commands.set_power_limit(SetPowerLimitParams(power_kw=10_000.0, valid_until=until))
        await wait_for(
            lambda: (
                st.scheduler.last is not None
                and st.scheduler.last.limit_kw == st.config.grid.cap_kw
            ),
            2.0,
        )


async def test_pack_over_temperature_turns_output_off_sends_cst_and_alarms(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        slot = w.station.slots["s01"]
        await wait_for(lambda: output_enabled(w, "ch01") and (slot.snapshot().current_a or 0) > 10)
        w.packs["s01"].inject(Fault.OVER_TEMPERATURE)
        await wait_for(
            lambda: (
                w.station.alarms.is_active("pack.fault", "s01")
                or w.station.alarms.is_active("pack.over_temperature", "s01")
            ),
            5,
        )
        await wait_for(lambda: not output_enabled(w, "ch01"), 3)
        assert slot.core.state is SlotState.FAULTED
        # CST reaches the BMS: it leaves its charging phase.
        await wait_for(lambda: w.packs["s01"].core.phase is not BmsPhase.CHARGING, 3)


async def test_bms_silent_output_off_and_slot_latches_after_rehandshakes(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        slot = w.station.slots["s01"]
        await wait_for(lambda: output_enabled(w, "ch01"))
        w.packs["s01"].inject(Fault.SILENT)
        await wait_for(lambda: w.station.alarms.is_active("pack.bms_timeout", "s01"), 5)
        await wait_for(lambda: not output_enabled(w, "ch01"), 3)
        await wait_for(lambda: slot.core.state is SlotState.UNAVAILABLE, 40)
        assert w.station.alarms.is_active("slot.unavailable", "s01")


async def test_safety_config_sets_the_bms_timeout_and_the_rehandshakes(tmp_path: Path) -> None:
    """`safety.bms_timeout_s` and `safety.max_rehandshakes` reach the GB/T session: a silent BMS
    is timed out after 2.5 s (the default is 1 s) and, with no re-handshake allowed, the slot
    latches at that first timeout (by default it re-handshakes three times first)."""
    extra = "safety:\n  bms_timeout_s: 2.5\n  max_rehandshakes: 0\n"
    async with running_station(mini_config(tmp_path, 1, extra=extra), soc_pct=40.0) as w:
        slot = w.station.slots["s01"]
        await wait_for(lambda: output_enabled(w, "ch01"))
        silent_at = time.monotonic()
        w.packs["s01"].inject(Fault.SILENT)
        await wait_for(lambda: w.station.alarms.is_active("pack.bms_timeout", "s01"), 6)
        assert time.monotonic() - silent_at >= 2.4
        await wait_for(lambda: not output_enabled(w, "ch01"), 3)
        await wait_for(lambda: slot.core.state is SlotState.UNAVAILABLE, 3)
        assert slot.link.session.rehandshakes == 0
        assert w.station.alarms.is_active("slot.unavailable", "s01")


async def test_silent_charger_goes_offline_within_3s_unfed_and_recovers(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        slot, dev = w.station.slots["s01"], w.station.network.devices["ch01"]
        await wait_for(lambda: output_enabled(w, "ch01"))
        w.chargers["ch01"].apply_fault("silent", True)
        loop_t0 = __import__("time").monotonic()
        await wait_for(lambda: w.station.alarms.is_active("modbus.offline", "ch01"), 5)
        assert __import__("time").monotonic() - loop_t0 < 3.5
        assert dev.state is DeviceState.OFFLINE
        await wait_for(lambda: slot.core.state is SlotState.UNAVAILABLE, 2)
        assert not dev.watchdog_feeding  # its own watchdog switches it off
        assert w.station.alarms.is_active("charger.offline", "s01")
        w.chargers["ch01"].apply_fault("silent", False)
        await wait_for(lambda: not w.station.alarms.is_active("modbus.offline", "ch01"), 20)
        # Back and reporting its output off: the latch releases.
        await wait_for(lambda: not w.station.alarms.is_active("charger.offline", "s01"), 10)
        assert not output_enabled(w, "ch01") or slot.core.state is not SlotState.UNAVAILABLE


async def test_sigterm_path_switches_every_output_off(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        await wait_for(lambda: output_enabled(w, "ch01") and output_enabled(w, "ch02"))
        chargers = w.chargers
    # The station stopped inside the context manager's exit: outputs were switched off first.
    assert not chargers["ch01"].get("enable") and not chargers["ch02"].get("enable")


async def test_offline_charger_marks_slot_telemetry_bad(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        pub, slot = w.station.publisher, w.station.slots["s01"]
        await wait_for(lambda: output_enabled(w, "ch01"))
        assert str(pub._slot_quality(slot)) == "good"
        w.chargers["ch01"].apply_fault("silent", True)
        await wait_for(lambda: w.station.network.devices["ch01"].state is DeviceState.OFFLINE, 5)
        assert str(pub._slot_quality(slot)) == "bad"


async def test_predictive_policy_runs_in_the_daemon_with_its_solver_process(
    tmp_path: Path,
) -> None:
    """grid.policy predictive in the composed daemon: the scheduler service starts the solver
    child process, plans arrive without blocking the loop, grants follow them within every
    limit, and station telemetry carries the plan's horizon."""
    from edge.scheduler.predictive import PredictivePolicy
    from edge.telemetry.models import StationTelemetry

    cfg = mini_config(tmp_path, 2)
    cfg.write_text(cfg.read_text().replace("policy: naive", "policy: predictive"))
    async with running_station(cfg, soc_pct=40.0) as w:
        st = w.station
        seen: list[StationTelemetry] = []
        update = st.telemetry.update_station

        def spy(t: StationTelemetry) -> None:
            seen.append(t)
            update(t)

        st.telemetry.update_station = spy  # type: ignore[method-assign]
        pol = st.scheduler.scheduler.policy
        assert isinstance(pol, PredictivePolicy)
        assert st.scheduler.solver is not None
        await wait_for(lambda: pol.solved >= 1 and st.scheduler.solver.pid is not None, 30)
        await wait_for(lambda: any(m.grid_plan for m in seen), 10)
        alloc = st.scheduler.last
        assert alloc is not None and alloc.total_kw <= alloc.limit_kw + 0.1
        assert not alloc.grid_reason.startswith("fallback"), alloc.grid_reason
        assert all(g.power_kw <= g.limit_kw + 1e-6 for g in alloc.grants)
        assert sum(pol.fallbacks.values()) == 0
        pid = st.scheduler.solver.pid
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()  # the solver went with the daemon


async def test_robot_telemetry_follows_the_plc(tmp_path: Path) -> None:
    """telemetry/robot: what the PLC reports (positions, interlocks), bad once it is gone."""
    from edge.telemetry.publisher import robot_fields

    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        coord = w.station.swap.coordinator
        assert w.station.publisher.robot is coord
        await wait_for(lambda: robot_fields(coord)["quality"] == "good", 10)
        fields = robot_fields(coord)
        assert fields["sequence_state"] == "idle" and fields["swap_id"] is None
        assert fields["axes_mm"] and all(isinstance(v, float) for v in fields["axes_mm"].values())
        assert fields["interlocks"] and all(type(v) is bool for v in fields["interlocks"].values())
        await w.plc.stop()
        await wait_for(lambda: robot_fields(coord)["quality"] == "bad", 10)
