"""The coordinator against the simulated robot PLC over loopback Modbus TCP."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge.swap.messages import PackIdentity, Rejected
from edge.swap.model import Mode
from tests.edge.swap_fixtures import ANNOUNCED, PACK_TYPE, check_occupancy, live_rig


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
        # the alarm is raised once the batch that held the swap is journalled and executed
        await rig.events.wait_for(
            lambda: ("robot.step_fault", "robot.vehicle") in rig.alarms.active
        )
        assert rig.coord.core.mode == Mode.HELD
        with pytest.raises(Rejected, match="no emergency-stop latch"):
            await rig.coord.execute("reset_fault", {})
        rig.sim.inject_stuck("vehicle", "verify")  # still running when the e-stop comes
        await rig.coord.execute("retry_step", {})
        # e-stop in the middle of the next step
        await rig.events.wait_for(
            lambda: rig.events.has("swap.step", step="verify", state="started")
        )
        rig.sim.emergency_stop(True)
        await rig.events.wait_for(lambda: ("safety.emergency_stop", "robot") in rig.alarms.active)
        assert rig.coord.core.latched
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
        await rig.events.wait_for(lambda: rig.alarms.active == set())
        check_occupancy(rig.sim, rig.coord.core.inventory)
        with pytest.raises(Rejected) as ei:
            await rig.coord.execute("launch", {})
        assert ei.value.code == "unknown_command"


class JournalCheckingPort:
    """Wraps the Modbus port: every command must find its intent already on disk."""

    def __init__(self, inner: Any, journal_path: Path) -> None:
        self.inner = inner
        self.path = journal_path
        self.checked = 0

    async def command(self, unit: str, step_code: int, arg: int, seq: int) -> None:
        db = sqlite3.connect(self.path)  # another connection: sees only committed data
        try:
            rows = db.execute("SELECT data FROM records WHERE kind = 'step_intent'").fetchall()
        finally:
            db.close()
        intents = [orjson.loads(r[0]) for r in rows]
        assert any(
            i["unit"] == unit and i["seq"] == seq and i["code"] == step_code for i in intents
        )
        self.checked += 1
        await self.inner.command(unit, step_code, arg, seq)

    async def read_status(self) -> Any:
        return await self.inner.read_status()

    async def set_halt(self, units: frozenset[str]) -> None:
        await self.inner.set_halt(units)


async def test_intent_is_on_disk_before_every_command(tmp_path: Path) -> None:
    async with live_rig(tmp_path, speed=200.0) as rig:
        checking = JournalCheckingPort(rig.coord.port, rig.journal.path)
        rig.coord.port = checking
        rig.vehicle.arrive()
        await rig.coord.execute("start_swap", rig.vehicle.announcement())
        await rig.events.wait_for(lambda: rig.events.has("swap.completed"))
        assert checking.checked == 15


async def test_plc_offline_holds_and_returns(tmp_path: Path) -> None:
    async with live_rig(tmp_path, speed=50.0) as rig:
        rig.vehicle.arrive()
        await rig.coord.execute("start_swap", rig.vehicle.announcement())
        await rig.events.wait_for(lambda: rig.events.has("swap.step", step="lift", state="started"))
        port = rig.sim._server
        assert port is not None
        addr = port.comm_params.source_address
        await rig.sim.stop()
        await rig.events.wait_for(lambda: ("robot.plc_offline", "robot") in rig.alarms.active)
        assert rig.coord.core.mode == Mode.HELD
        with pytest.raises(Rejected, match="offline"):
            await rig.coord.execute("retry_step", {})
        await rig.sim.start(*addr)
        await rig.events.wait_for(lambda: ("robot.plc_offline", "robot") not in rig.alarms.active)
        await rig.coord.execute("retry_step", {})
        await rig.events.wait_for(lambda: rig.events.has("swap.completed"))
        check_occupancy(rig.sim, rig.coord.core.inventory)
        assert [m.step for m in rig.sim.motions].count("lift") == 1
        assert await rig.coord.shutdown(1.0)
        assert rig.sim.halt_bits == {"vehicle", "rack"}


async def test_sim_fault_names() -> None:
    """The simulator takes the fault catalogue's names (sim.faults), and only those."""
    from sim.devices.robot_plc import FAULT_NAMES, RobotPlcSim
    from sim.faults import fault_catalogue

    robot = next(d for d in fault_catalogue() if d.device_type == "robot")
    assert tuple(f.name for f in robot.faults) == FAULT_NAMES
    sim = RobotPlcSim()
    sim.apply_fault("emergency_stop")
    assert not sim.inputs["estop_chain_healthy"]
    sim.apply_fault("emergency_stop", clear=True)
    assert sim.inputs["estop_chain_healthy"]
    sim.apply_fault("step_fault", params={"unit": "rack", "step": "store"})
    sim.apply_fault("torque_failure", params={"heads": 2})
    assert ("rack", "store") in sim.faults.step_fault and sim.faults.torque_heads == 2
    sim.apply_fault("stuck_step", params={"unit": "vehicle", "step": "lock"})
    sim.apply_fault("torque_failure")  # one head by default
    assert ("vehicle", "lock") in sim.faults.stuck and sim.faults.torque_heads == 1
    sim.apply_fault("stuck_step", clear=True, params={"unit": "vehicle", "step": "lock"})
    sim.apply_fault("step_fault", clear=True)  # withdraws every pending one
    assert not sim.faults.stuck and not sim.faults.step_fault
    for old in ("estop", "torque:2", "stuck", "curtain", "meteor"):
        with pytest.raises(ValueError, match="unknown fault"):
            sim.apply_fault(old)
    with pytest.raises(ValueError, match="no PLC step"):
        sim.apply_fault("stuck_step", params={"unit": "rack", "step": "fly"})
    with pytest.raises(ValueError, match="heads"):
        sim.apply_fault("torque_failure", params={"heads": sim.lock_heads + 1})


async def test_journal_failure_stops_the_coordinator_before_the_command(tmp_path: Path) -> None:
    from edge.swap.journal import JournalError

    async with live_rig(tmp_path, speed=200.0) as rig:
        rig.vehicle.arrive()
        real_commit = rig.journal.commit
        calls = {"n": 0}

        def failing_commit(ts: str, records: Any, snapshot: Any) -> None:
            if any(r.kind == "step_intent" and r.data["step"] == "lift" for r in records):
                raise JournalError("disk full")
            real_commit(ts, records, snapshot)
            calls["n"] += 1

        rig.journal.commit = failing_commit  # type: ignore[method-assign]
        await rig.coord.execute("start_swap", rig.vehicle.announcement())
        await rig.events.wait_for(lambda: rig.task_done(), 20)
        assert isinstance(rig.task_exception(), JournalError)
        assert "lift" not in [m.step for m in rig.sim.motions]
        assert sorted(m.step for m in rig.sim.motions) == ["fetch", "position"]
        # the last snapshot on disk is the one before the failed commit: a restart resumes there
        snap = rig.journal.snapshot()
        assert snap is not None and snap["swap"]["runs"]["lift"]["status"] == "pending"


async def test_build_from_the_station_config(tmp_path: Path) -> None:
    import yaml

    from drivers.core.clock import SystemClock
    from edge.config import StationConfig
    from edge.swap.service import build_swap
    from tests.doubles import RecordingAlarmSink
    from tests.edge.swap_fixtures import RACK, Events, Outputs, Views

    path = Path(__file__).resolve().parents[2] / "config" / "station.yaml"
    # validated as a model only: the charger maps belong to another room
    cfg = StationConfig.model_validate({**yaml.safe_load(path.read_text()), "source": path})
    room = build_swap(
        cfg,
        clock=SystemClock(),
        outputs=Outputs(),
        slots=Views(RACK),
        events=Events(),
        alarms=RecordingAlarmSink(),
        state_dir=tmp_path,
    )
    try:
        assert room.coordinator.core.slot_numbers["s01"] == 1
        assert room.coordinator.core.slot_numbers["s12"] == 12
        assert room.journal.path == tmp_path / "swap-journal.sqlite"
        assert room.graph.critical_path()[0] == 139.0
    finally:
        room.close()


async def test_port_reads_back_the_command_registers(tmp_path: Path) -> None:
    async with live_rig(tmp_path, speed=200.0) as rig:
        rig.vehicle.arrive()
        await rig.coord.execute("start_swap", rig.vehicle.announcement())
        await rig.events.wait_for(lambda: rig.events.has("swap.completed"))
        echo = await rig.coord.port.read_commands()  # type: ignore[attr-defined]
        assert echo["vehicle"].seq == 11 and echo["rack"].seq == 4
        assert echo["rack"].step_code == 4 and echo["rack"].arg == 4  # store into S4


async def test_a_cancel_swallowed_with_the_plc_answer_still_stops_the_port(
    tmp_path: Path,
) -> None:
    """Python 3.11's asyncio.wait_for (inside pymodbus) can return the answer when our task is
    cancelled at the moment it arrives, dropping the CancelledError; the port must re-raise it
    (else the coordinator polls on after the station's stop). The swallow is played here by a
    request that cancels its own task and absorbs the CancelledError as wait_for does, around a
    real read from the simulated PLC."""
    import asyncio

    async with live_rig(tmp_path, speed=100.0) as rig:
        port = rig.coord.port
        client = port._client  # type: ignore[attr-defined]

        async def answer_with_the_cancel() -> Any:
            task = asyncio.current_task()
            assert task is not None
            rr = await client.read_input_registers(0, count=1, device_id=1)
            task.cancel()
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                pass  # wait_for on 3.11: the result wins, the cancel is lost
            return rr

        async def call() -> Any:
            return await port._call("read status", answer_with_the_cancel)  # type: ignore[attr-defined]

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(call(), name="swallowed-cancel")
