"""The pure swap sequence against the simulated PLC's logic on a ManualClock."""

from __future__ import annotations

import pytest

from edge.swap.inventory import SlotPlace
from edge.swap.messages import (
    CorrectInventory,
    JournalWrite,
    Manual,
    PackDocked,
    PackIdentity,
    PlcOffline,
    RefitOriginal,
    Rejected,
    ResetFault,
    RetryStep,
    StartSwap,
)
from edge.swap.model import Mode
from edge.swap.snapshot import restore, take
from edge.swap.steps import load_step_graph
from tests.edge.swap_fixtures import ANNOUNCED, PACK_TYPE, RACK, SLOTS, CoreRig, slot_views


def completed(rig: CoreRig) -> bool:
    return rig.has("swap.completed") or rig.has("swap.failed")


def started(rig: CoreRig, step: str) -> bool:
    return step in rig.step_events("started")


def test_complete_swap_takes_the_critical_path_and_keeps_inventory() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    t0 = rig.clock.monotonic()
    rig.run(lambda: completed(rig), dt=0.1)
    elapsed = rig.clock.monotonic() - t0
    total, _ = rig.graph.critical_path()
    assert total == 139.0 and rig.graph.series_s() == 179.0
    assert 139.0 <= elapsed < 139.0 + 13 * 0.25
    assert rig.has("swap.completed") and not rig.has("swap.fault")
    assert rig.core.reserved_slots() == frozenset()
    assert sorted(rig.commanded()) == sorted(rig.graph.order())  # each step exactly once
    assert len(rig.sim.motions) == 15
    # S2 had the highest SOC; the depleted pack went to the first free slot
    assert rig.place("P-002") is None  # left with the vehicle
    assert rig.place(ANNOUNCED) == "slot:S4"
    assert rig.core.mode == Mode.IDLE and rig.core.inventory.problems() == []
    rig.check_matches_sim()
    # rack-side fetch ran in parallel with the vehicle side
    order = rig.commanded()
    assert order.index("fetch_full") < order.index("lift")


def test_pack_choice_highest_soc_then_fewest_cycles_and_refusal_reason() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    views = slot_views(RACK, S2={"soc_pct": 95.0, "cycles": 300})
    rig.start(views=views)
    assert rig.core.swap is not None and rig.core.swap.full_slot == "S1"  # same SOC, fewer cycles
    assert rig.core.reserved_slots() == {"S1", "S4"}
    rig2 = CoreRig()
    bad = slot_views(
        RACK,
        S1={"alarm_active": True},
        S2={"output_off": False},
        S3={"temperature_c": 60.0, "soc_pct": 99.0},
    )
    rig2.poll()
    n = len(rig2.journal)
    with pytest.raises(Rejected) as ei:
        rig2.feed(StartSwap("V1", PACK_TYPE, ANNOUNCED, bad))
    msg = ei.value.message
    assert "S1: alarm active" in msg and "S2: charger output not off" in msg
    assert "S3: temperature" in msg
    assert rig2.commands == [] and len(rig2.journal) == n and rig2.core.swap is None
    with pytest.raises(Rejected, match="type T20 is not T25"):
        rig2.feed(StartSwap("V1", "T25", ANNOUNCED, slot_views(RACK)))
    low_soh = slot_views(RACK, S1={"soh_pct": 50.0}, S2={"session_ended": False})
    with pytest.raises(Rejected, match="SOH 50% < 70%"):
        rig2.feed(StartSwap("V1", PACK_TYPE, ANNOUNCED, low_soh))


@pytest.mark.parametrize(
    ("interlock", "step"),
    [
        ("doors_closed", "position"),
        ("light_curtain_clear", "position"),
        ("vehicle_present", "position"),
        ("vehicle_hv_off", "lift"),
        ("vehicle_immobilised", "lift"),
        ("output_off", "fetch_full"),
    ],
)
def test_each_interlock_blocks_its_step(interlock: str, step: str) -> None:
    rig = CoreRig(auto_outputs=interlock != "output_off")
    rig.vehicle.arrive()
    if interlock != "output_off":
        rig.sim.inputs[interlock] = False
    rig.start()
    rig.run(lambda: rig.clock.monotonic() > 1100.0 + 100, dt=1.0)
    assert step not in rig.commanded()
    blocked = [d for t, d in rig.events if t == "swap.step" and d["state"] == "blocked"]
    assert any(d["step"] == step for d in blocked)
    if interlock == "output_off":
        assert rig.pending_outputs  # requested, not yet confirmed
        rig.auto_outputs = True
    else:
        rig.sim.inputs[interlock] = True
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed") and step in rig.commanded()


def test_emergency_stop_halts_outputs_off_latches_and_resets_only_when_healthy() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "unlock"))
    rig.sim.emergency_stop(True)
    rig.poll()
    assert rig.core.latched and rig.core.mode == Mode.HELD
    assert rig.sim.halt_bits == {"vehicle", "rack"} and rig.all_off == 1
    assert ("safety.emergency_stop", "robot") in rig.alarms
    with pytest.raises(Rejected, match="still open"):
        rig.feed(ResetFault())
    with pytest.raises(Rejected, match="latched"):
        rig.feed(RetryStep())
    rig.sim.emergency_stop(False)
    rig.clock.advance(1.0)
    assert rig.core.latched  # stays latched with the chain healthy until a deliberate reset
    rig.poll()
    rig.feed(ResetFault())
    assert not rig.core.latched and ("safety.emergency_stop", "robot") not in rig.alarms
    rig.feed(RetryStep())
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")
    rig.check_matches_sim()


def test_emergency_stop_while_idle_latches_and_blocks_start() -> None:
    rig = CoreRig()
    rig.sim.emergency_stop(True)
    rig.poll()
    assert rig.core.latched and rig.all_off == 1
    rig.vehicle.arrive()
    with pytest.raises(Rejected, match="latched"):
        rig.start()
    rig.sim.emergency_stop(False)
    rig.poll()
    rig.feed(ResetFault())
    assert rig.sim.halt_bits == frozenset()


def test_step_fault_holds_then_retry_completes() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_step_fault("rack", "fetch")
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD)
    assert ("robot.step_fault", "robot.rack") in rig.alarms
    fault = [d for t, d in rig.events if t == "swap.fault"][0]
    assert fault["step"] == "fetch_full" and "P-002" in fault["pack_ids"]
    assert fault["detail"] == "motion_failed"
    # the vehicle side carries on with its running step but starts nothing new
    rig.run(lambda: rig.clock.monotonic() > 1300, dt=2.0)
    rig.feed(RetryStep())
    assert ("robot.step_fault", "robot.rack") not in rig.alarms
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")
    assert rig.commanded().count("fetch_full") == 2
    rig.check_matches_sim()


def test_stuck_step_times_out_halts_unit_then_retry() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_stuck("vehicle", "unlock")
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD)
    assert ("robot.step_timeout", "robot.vehicle") in rig.alarms
    assert "vehicle" in rig.sim.halt_bits
    rig.poll()
    rig.feed(RetryStep())
    assert rig.sim.halt_bits == frozenset()
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")
    rig.check_matches_sim()


def test_torque_failure_holds_unless_the_locking_rule_is_met() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_torque_failure(2)
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD)
    fail = [d for t, d in rig.events if t == "swap.step" and d["state"] == "failed"][0]
    assert fail["step"] == "lock" and fail["reason"] == "torque_out_of_window"
    assert "6 of 8 heads" in fail["detail"]
    assert "verify" not in rig.commanded()
    rig.feed(RetryStep())
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed") and rig.commanded().count("lock") == 2

    model = load_step_graph().model
    lenient = load_step_graph()
    object.__setattr__(
        lenient,
        "model",
        model.model_copy(
            update={"locking_rule": model.locking_rule.model_copy(update={"min_heads_ok": 7})}
        ),
    )
    rig2 = CoreRig(lenient)
    rig2.vehicle.arrive()
    rig2.sim.inject_torque_failure(1)
    rig2.start()
    rig2.run(lambda: completed(rig2))
    assert rig2.has("swap.completed") and not rig2.has("swap.fault")


def test_curtain_broken_mid_step_halts_vehicle_and_holds() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "lift"))
    rig.sim.break_curtain(True)
    rig.poll()
    assert rig.core.mode == Mode.HELD
    assert ("robot.interlock_lost", "robot.vehicle") in rig.alarms
    assert "vehicle" in rig.sim.halt_bits and "rack" not in rig.sim.halt_bits
    with pytest.raises(Rejected, match="light_curtain_clear"):
        rig.feed(RetryStep())
    rig.sim.break_curtain(False)
    rig.poll()
    rig.feed(RetryStep())
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")
    rig.check_matches_sim()


@pytest.mark.parametrize(
    ("fail_unit", "fail_step", "expect_plan"),
    [
        (
            "vehicle",
            "unlock",
            [
                "refit_put_back",
                "refit_lock",
                "refit_verify",
                "refit_lower_vehicle",
                "refit_release",
            ],
        ),
        (
            "rack",
            "take",
            [
                "refit_put_back",
                "refit_shuttle_to_vehicle",
                "refit_raise",
                "refit_lock",
                "refit_verify",
                "refit_lower_vehicle",
                "refit_release",
            ],
        ),
        ("vehicle", "lift", ["refit_put_back", "refit_lower_vehicle", "refit_release"]),
    ],
)
def test_refit_original_returns_the_pack_to_the_vehicle(
    fail_unit: str, fail_step: str, expect_plan: list[str]
) -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_step_fault(fail_unit, fail_step)
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD and rig.place("P-002") == "buffer")
    rig.feed(RefitOriginal())
    assert rig.core.swap is not None and rig.core.swap.plan == expect_plan
    rig.run(lambda: completed(rig))
    assert rig.has("swap.failed") and rig.events[-1][1]["reason"] == "original pack refitted"
    assert rig.place(ANNOUNCED) is None  # left with its vehicle
    assert rig.place("P-002") == "slot:S2"
    rig.check_matches_sim()


def test_refit_from_stacker_and_refusals() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_step_fault("rack", "give")
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD)
    assert rig.place(ANNOUNCED) == "stacker"
    rig.feed(RefitOriginal())
    assert rig.core.swap is not None
    assert rig.core.swap.plan[:3] == ["refit_put_back", "refit_return", "refit_shuttle_to_vehicle"]
    rig.run(lambda: completed(rig))
    rig.check_matches_sim()
    # refused once the original pack is stored
    rig2 = CoreRig()
    rig2.vehicle.arrive()
    rig2.sim.inject_step_fault("vehicle", "lock")
    rig2.start()
    rig2.run(lambda: rig2.core.mode == Mode.HELD and rig2.place(ANNOUNCED) == "slot:S4")
    with pytest.raises(Rejected, match="already stored"):
        rig2.feed(RefitOriginal())
    with pytest.raises(Rejected, match="no swap in progress"):
        CoreRig().feed(RefitOriginal())


def test_manual_halts_both_and_ends_after_inventory_correction() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_step_fault("rack", "take")
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD and rig.place("P-002") == "buffer")
    rig.feed(Manual())
    assert rig.core.mode == Mode.MANUAL and rig.sim.halt_bits == {"vehicle", "rack"}
    with pytest.raises(Rejected, match="packs still recorded at shuttle, buffer"):
        rig.feed(Manual(end=True))
    with pytest.raises(Rejected, match="unknown place 'slot:S99'"):
        rig.feed(CorrectInventory("P-002", SlotPlace("S99")))
    # the attendant put the full pack back in S2 and the depleted one in S5
    rig.feed(CorrectInventory("P-002", SlotPlace("S2")))
    rig.feed(CorrectInventory(ANNOUNCED, SlotPlace("S5")))
    rig.feed(Manual(end=True))
    assert rig.core.mode == Mode.IDLE and rig.sim.halt_bits == frozenset()
    assert rig.events[-1][0] == "swap.failed" and rig.events[-1][1]["reason"] == "manual"
    assert rig.core.inventory.problems() == []


def test_pack_mismatch_alarms_and_inventory_records_what_the_pack_says() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: completed(rig))
    rig.feed(PackDocked("S4", PackIdentity("P-REAL-9", PACK_TYPE)))
    assert ("swap.pack_mismatch", "S4") in rig.alarms
    assert rig.place("P-REAL-9") == "slot:S4" and rig.place(ANNOUNCED) is None
    ev = [d for t, d in rig.events if t == "swap.pack_mismatch"][0]
    assert ev["announced_pack_id"] == ANNOUNCED and ev["pack_id"] == "P-REAL-9"
    # a matching identity raises nothing
    rig2 = CoreRig()
    rig2.vehicle.arrive()
    rig2.start()
    rig2.run(lambda: completed(rig2))
    rig2.feed(PackDocked("S4", PackIdentity(ANNOUNCED, PACK_TYPE)))
    assert not any(c == "swap.pack_mismatch" for c, _ in rig2.alarms)


def test_docked_identity_before_store_confirmed_is_checked_after() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "store_depleted"))
    rig.feed(PackDocked("S4", PackIdentity("P-OTHER", PACK_TYPE)))
    assert ("swap.pack_mismatch", "S4") not in rig.alarms
    rig.run(lambda: completed(rig))
    assert ("swap.pack_mismatch", "S4") in rig.alarms and rig.place("P-OTHER") == "slot:S4"


def test_plc_offline_holds_and_retry_resumes() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "lift"))
    rig.feed(PlcOffline("timeout"))
    assert rig.core.mode == Mode.HELD and ("robot.plc_offline", "robot") in rig.alarms
    rig.clock.advance(20)  # the PLC finishes lift meanwhile
    rig.poll()
    assert ("robot.plc_offline", "robot") not in rig.alarms
    assert "lift" in rig.step_events("done")  # confirmed although held
    assert "unlock" not in rig.commanded()
    rig.feed(RetryStep())
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")


def test_restore_from_snapshot_resends_unacknowledged_command_once() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "lift"))
    # crash after the intent was journalled but before the PLC got the command:
    # build the snapshot, then undo the command on the simulated PLC
    last = rig.commands[-1]
    assert last.step_id == "lift"
    snap = take(rig.core)
    rig.sim.units["vehicle"].ack_seq = last.seq - 1
    rig.sim.units["vehicle"].state = rig.sim.units["vehicle"].state.DONE
    # it still shows the step it acknowledged last (checked against the journal at restore)
    rig.sim.units["vehicle"].step_code = rig.graph.contract.step_code("vehicle", "position")
    rig.sim.motions.pop()
    rig.core = restore(rig.graph, SLOTS, snap)
    rig.apply(rig.core.resume(rig.clock.monotonic()))
    rig.poll()
    resent = [c for c in rig.commands if c.step_id == "lift"]
    assert len(resent) == 2 and resent[0].seq == resent[1].seq  # same intent, same seq
    rig.poll()
    assert len([c for c in rig.commands if c.step_id == "lift"]) == 2  # acknowledged: no resend
    rig.run(lambda: completed(rig))
    steps = [m.step for m in rig.sim.motions]
    assert len(steps) == len(set(steps)) == 15  # no motion twice
    rig.check_matches_sim()


def test_start_swap_validation_and_busy() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    with pytest.raises(Rejected, match="offline"):
        rig.feed(StartSwap("V1", PACK_TYPE, ANNOUNCED, slot_views(RACK)))
    rig.poll()
    with pytest.raises(Rejected, match="already recorded"):
        rig.feed(StartSwap("V1", PACK_TYPE, "P-001", slot_views(RACK)))
    with pytest.raises(Rejected) as ei:
        rig.feed(StartSwap("", PACK_TYPE, ANNOUNCED, slot_views(RACK)))
    assert ei.value.code == "invalid_params"
    rig.start()
    with pytest.raises(Rejected, match="already running"):
        rig.start()
    assert all(isinstance(a, JournalWrite) for a in rig.journal)


def test_plc_that_lost_its_counter_is_not_sent_the_command_again() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "unlock"))
    n = len(rig.commands)
    # the PLC reboots: counters back to 0, the unlock in progress is gone
    for u in rig.sim.units.values():
        u.ack_seq = 0
        u.state = u.state.IDLE
    rig.clock.advance(5)
    rig.poll()
    assert ("robot.plc_restarted", "robot") in rig.alarms and rig.core.mode == Mode.HELD
    rig.clock.advance(5)
    rig.poll()
    assert len(rig.commands) == n  # nothing resent
    with pytest.raises(Rejected, match="PLC restarted"):
        rig.feed(RetryStep())
    rig.feed(ResetFault())  # operator checked the robot
    assert ("robot.plc_restarted", "robot") not in rig.alarms
    rig.feed(RetryStep())
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")


def test_restart_keeps_a_held_swap_held_and_the_latch_latched() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.sim.inject_step_fault("vehicle", "lift")
    rig.start()
    rig.run(lambda: rig.core.mode == Mode.HELD)
    rig.sim.emergency_stop(True)
    rig.poll()
    snap = take(rig.core)
    core = restore(rig.graph, SLOTS, snap)
    acts = core.resume(rig.clock.monotonic())
    assert core.mode == Mode.HELD and core.latched
    kinds = {type(a).__name__ for a in acts}
    assert {"RaiseAlarm", "SetHalt", "RequestAllOutputsOff", "Emit", "JournalWrite"} <= kinds
    raised = {(a.code, a.source) for a in acts if type(a).__name__ == "RaiseAlarm"}  # type: ignore[attr-defined]
    assert ("safety.emergency_stop", "robot") in raised
    assert ("robot.step_fault", "robot.vehicle") in raised
    assert core.inventory.to_json() == rig.core.inventory.to_json()


def test_output_off_failure_holds_and_retry_asks_again() -> None:
    from edge.swap.messages import SlotOutputFailed, SlotOutputOff

    rig = CoreRig(auto_outputs=False)
    rig.vehicle.arrive()
    rig.start()
    assert rig.pending_outputs == ["S2", "S4"]
    rig.pending_outputs.clear()
    rig.feed(SlotOutputOff("S4"))
    rig.feed(SlotOutputFailed("S2", "charger offline"))
    assert rig.core.mode == Mode.HELD
    fault = [d for t, d in rig.events if t == "swap.fault"][-1]
    assert fault["reason"] == "output_off_failed" and "S2" in fault["detail"]
    rig.run(lambda: rig.clock.monotonic() > 1200, dt=2.0)
    assert "fetch_full" not in rig.commanded()  # the pack never leaves a live slot
    rig.feed(RetryStep())
    assert rig.pending_outputs == ["S2"]
    rig.auto_outputs = True
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")


def test_a_step_back_into_a_slot_needs_a_fresh_output_off() -> None:
    """Issue 12 item 3: `fetch_full` used up S2's output-off confirmation. Putting the pack back
    into S2 (refit) asks for the off again and commands nothing into S2 before a new
    confirmation: the slot may have been energised since the first one."""
    from edge.swap.messages import SlotOutputOff

    rig = CoreRig(auto_outputs=False)
    rig.vehicle.arrive()
    rig.sim.inject_step_fault("vehicle", "unlock")
    rig.start()
    assert rig.pending_outputs == ["S2", "S4"]
    for slot in rig.pending_outputs:
        rig.feed(SlotOutputOff(slot))
    rig.pending_outputs.clear()
    rig.run(lambda: rig.core.mode == Mode.HELD and rig.place("P-002") == "buffer")
    rig.feed(RefitOriginal())
    t_wait = rig.clock.monotonic() + 60
    rig.run(lambda: rig.clock.monotonic() >= t_wait, dt=1.0)
    assert "refit_put_back" not in rig.commanded()  # the PLC was never sent into S2
    assert rig.pending_outputs == ["S2"]  # asked afresh
    rig.auto_outputs = True
    rig.run(lambda: completed(rig))
    assert "refit_put_back" in rig.commanded() and rig.place("P-002") == "slot:S2"


def test_vehicle_never_lowered_unless_pack_locked_or_clear() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "verify"))
    rig.sim.lock_torque_ok = 0  # heads slip during verify
    rig.run(lambda: "verify" in rig.step_events("done"))
    t_wait = rig.clock.monotonic() + 30
    rig.run(lambda: rig.clock.monotonic() >= t_wait, dt=1.0)
    assert "lower_vehicle" not in rig.commanded()
    blocked = [d for t, d in rig.events if t == "swap.step" and d["state"] == "blocked"]
    assert {
        "step": "lower_vehicle",
        "unit": "vehicle",
        "state": "blocked",
        "missing": ["pack_locked_or_clear"],
        "swap_id": "swap-000001",
    } in blocked
    rig.sim.lock_torque_ok = 0xFF
    rig.run(lambda: completed(rig))
    assert rig.has("swap.completed")


def test_frozen_heartbeat_halts_both_units_alarms_and_starts_nothing() -> None:
    """Issue 12 outcome 8: a frozen PLC image kept reporting the e-stop chain healthy and steps
    went on. A heartbeat that stops advancing halts both units, alarms, holds the swap; nothing
    starts until the heartbeat moves again and the operator retries."""
    from edge.swap.messages import PlcStatus
    from edge.swap.model import StepStatus

    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "lift"), dt=0.1)
    frozen = rig.sim.status()
    n = len(rig.commands)
    for _ in range(30):  # 3 s of the same image
        rig.clock.advance(0.1)
        rig.feed(PlcStatus(frozen))
        rig.apply(rig.core.tick(rig.clock.monotonic()))
    assert ("robot.plc_stale", "robot") in rig.alarms
    assert rig.sim.halt_bits == frozenset({"vehicle", "rack"})
    assert rig.core.mode == Mode.HELD and rig.core.swap is not None
    assert rig.core.swap.runs["lift"].status == StepStatus.FAILED
    assert len(rig.commands) == n  # nothing started or resent on the frozen image
    rig.poll()  # the heartbeat moves again: the alarm clears, the swap stays held
    assert ("robot.plc_stale", "robot") not in rig.alarms
    assert rig.core.mode == Mode.HELD


def test_a_stale_status_halts_a_running_step_and_no_step_starts_on_it() -> None:
    """Issue 12 outcome 8: a step could start on a status several failed polls old."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "position"), dt=0.1)
    n = len(rig.commands)
    rig.clock.advance(rig.graph.model.status_max_age_s + 0.5)  # no status read meanwhile
    rig.apply(rig.core.tick(rig.clock.monotonic()))
    assert ("robot.plc_stale", "robot") in rig.alarms
    assert rig.sim.halt_bits == frozenset({"vehicle", "rack"})
    assert rig.core.mode == Mode.HELD
    assert len(rig.commands) == n


def test_places_parse_from_their_file_form_and_print_back() -> None:
    from edge.swap.inventory import Handling, parse_place

    assert parse_place("slot:S2") == SlotPlace("S2") and str(SlotPlace("S2")) == "slot:S2"
    assert parse_place("buffer") is Handling.BUFFER and str(Handling.BUFFER) == "buffer"
    for bad in ("roof", "slot:", "Slot:S2"):
        with pytest.raises(ValueError, match="unknown place"):
            parse_place(bad)


def test_a_slot_still_probing_at_first_boot_is_never_the_store_slot() -> None:
    """A swap accepted 0.6 s after a first boot stored the depleted pack in a slot whose
    start-up probe was still running; the probe's timeout then took the slot for empty and
    undocked the stored pack, and the swap never completed (CI, tests/sim/test_world.py)."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start(views=slot_views(RACK, S4={"reported": False}))
    assert rig.core.swap is not None and rig.core.swap.store_slot == "S5"
    rig2 = CoreRig()
    rig2.vehicle.arrive()
    probing = {"reported": False}
    with pytest.raises(Rejected, match="no free slot"):
        rig2.start(views=slot_views(RACK, S4=probing, S5=probing, S6=probing))
    assert rig2.core.swap is None
