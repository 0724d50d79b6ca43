"""The coordinator against the simulated robot PLC over loopback Modbus TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.swap.sequence import Mode, PackIdentity, Rejected
from tests.swap_fixtures import ANNOUNCED, PACK_TYPE, check_occupancy, live_rig


async def test_complete_swap_over_modbus(tmp_path: Path) -> None:
    async with live_rig(tmp_path, speed=200.0) as rig:
        rig.vehicle.arrive()
        res = await rig.coord.execute("start_swap", rig.vehicle.announcement())
        assert res["full_slot"] == "S2" and res["store_slot"] == "S4"
        await rig.events.wait_for(lambda: rig.events.has("swap.completed"))
        assert sorted(rig.outputs.off) == ["S2", "S4"]
        assert [m.step for m in rig.sim.motions].count("lock") == 1
        assert len(rig.sim.motions) == 15
        check_occupancy(rig.sim, rig.coord.core.inventory)
        await rig.coord.pack_docked("S4", PackIdentity(ANNOUNCED, PACK_TYPE))
        assert rig.alarms.active == set()
        # journal: intent before done for every step, and it is on disk with synchronous=FULL
        kinds = [(r.kind, r.data.get("step")) for r in rig.journal.records()]
        for step in {s for k, s in kinds if k == "step_done"}:
            assert kinds.index(("step_intent", step)) < kinds.index(("step_done", step))
        assert rig.journal.synchronous() == 2
        st = await rig.coord.execute("status", {})
        assert (
            st["mode"] == "idle"
            and {"pack_id": ANNOUNCED, "pack_type": PACK_TYPE, "place": "slot:S4"}
            in st["inventory"]
        )


async def test_faults_and_recovery_over_modbus(tmp_path: Path) -> None:
    async with live_rig(tmp_path, speed=100.0) as rig:
        rig.vehicle.arrive()
        rig.sim.inject_torque_failure(3)
        await rig.coord.execute("start_swap", rig.vehicle.announcement())
        await rig.events.wait_for(lambda: rig.coord.core.mode == Mode.HELD)
        assert ("robot.step_fault", "robot.vehicle") in rig.alarms.active
        with pytest.raises(Rejected, match="no emergency-stop latch"):
            await rig.coord.execute("reset_fault", {})
        await rig.coord.execute("retry_step", {})
        # e-stop in the middle of the next step
        await rig.events.wait_for(
            lambda: rig.events.has("swap.step", step="verify", status="started")
        )
        rig.sim.emergency_stop(True)
        await rig.events.wait_for(lambda: rig.coord.core.latched)
        assert ("safety.emergency_stop", "robot") in rig.alarms.active
        await rig.events.wait_for(lambda: rig.outputs.all_off == 1)
        assert rig.sim.halt_bits == {"vehicle", "rack"}
        with pytest.raises(Rejected, match="still open"):
            await rig.coord.execute("reset_fault", {})
        rig.sim.emergency_stop(False)
        await rig.events.wait_for(
            lambda: (
                rig.coord.core.plc is not None and rig.coord.core.plc.inputs["estop_chain_healthy"]
            )
        )
        await rig.coord.execute("reset_fault", {})
        await rig.coord.execute("retry_step", {})
        await rig.events.wait_for(lambda: rig.events.has("swap.completed"))
        assert rig.alarms.active == set()
        check_occupancy(rig.sim, rig.coord.core.inventory)
        with pytest.raises(Rejected) as ei:
            await rig.coord.execute("launch", {})
        assert ei.value.code == "unknown_command"
