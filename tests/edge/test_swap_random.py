"""Random fault sequences on the pure sequence: the inventory invariants always hold, it agrees
with the simulated PLC's physical places whenever nothing moves, and no seq is reused."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.robot.contract import UnitState
from edge.swap.messages import Manual, PlcOffline, RefitOriginal, Rejected, ResetFault, RetryStep
from edge.swap.model import Mode, StepStatus
from edge.swap.status import status_view
from tests.edge.swap_fixtures import CoreRig, check_occupancy

PLC_STEPS = [
    ("vehicle", "position"),
    ("vehicle", "lift"),
    ("vehicle", "unlock"),
    ("vehicle", "lower_pack"),
    ("vehicle", "raise_and_seat"),
    ("vehicle", "lock"),
    ("vehicle", "lower_vehicle"),
    ("rack", "fetch"),
    ("rack", "take"),
    ("rack", "give"),
    ("rack", "store"),
    ("rack", "return_to_shuttle"),
    ("rack", "put_back"),
]

ops = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.5, 40.0)),
    st.tuples(st.just("step_fault"), st.sampled_from(PLC_STEPS)),
    st.tuples(st.just("stuck"), st.sampled_from(PLC_STEPS)),
    st.tuples(st.just("torque"), st.integers(1, 3)),
    st.tuples(st.just("estop"), st.booleans()),
    st.tuples(st.just("curtain"), st.booleans()),
    st.tuples(st.just("doors"), st.booleans()),
    st.tuples(st.just("offline"), st.none()),
    st.tuples(st.just("reset"), st.none()),
    st.tuples(st.just("retry"), st.none()),
    st.tuples(st.just("refit"), st.none()),
    st.tuples(st.just("manual"), st.none()),
)


def check(rig: CoreRig) -> None:
    assert rig.core.inventory.problems() == []
    # one command (code, arg) per (unit, seq): a seq is never reused for another motion
    seen: dict[tuple[str, int], tuple[int, int]] = {}
    for c in rig.commands:
        key = (c.unit, c.seq)
        assert seen.setdefault(key, (c.step_code, c.arg)) == (c.step_code, c.arg)
    seqs = [(m.unit, m.seq) for m in rig.sim.motions]
    assert len(seqs) == len(set(seqs)), "the PLC ran one seq twice"
    sw = rig.core.swap
    moving = any(u.state == UnitState.BUSY for u in rig.sim.units.values()) or (
        sw is not None and any(r.status == StepStatus.ACTIVE for r in sw.runs.values())
    )
    if not moving and rig.core.mode != Mode.MANUAL:
        check_occupancy(rig.sim, rig.core.inventory)


def apply(rig: CoreRig, op: str, arg: Any) -> None:
    try:
        if op == "advance":
            _advance(rig, arg)
        elif op == "step_fault":
            rig.sim.inject_step_fault(*arg)
        elif op == "stuck":
            rig.sim.inject_stuck(*arg)
        elif op == "torque":
            rig.sim.inject_torque_failure(arg)
        elif op == "estop":
            rig.sim.emergency_stop(arg)
        elif op == "curtain":
            rig.sim.break_curtain(arg)
        elif op == "doors":
            rig.sim.set_input("doors_closed", not arg)
        elif op == "offline":
            rig.feed(PlcOffline("injected"))
        elif op == "reset":
            rig.feed(ResetFault())
        elif op == "retry":
            rig.feed(RetryStep())
        elif op == "refit":
            rig.feed(RefitOriginal())
        elif op == "manual":
            rig.feed(Manual())
    except Rejected:
        pass


def _advance(rig: CoreRig, seconds: float) -> None:
    t_end = rig.clock.monotonic() + seconds
    while rig.clock.monotonic() < t_end:
        rig.clock.advance(0.5)
        rig.poll()
        check(rig)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=25))
def test_random_faults_keep_inventory_invariants(seq: list[tuple[str, Any]]) -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    for op, arg in seq:
        apply(rig, op, arg)
        check(rig)
    # heal everything and drive the swap to an end
    rig.sim.emergency_stop(False)
    rig.sim.break_curtain(False)
    rig.sim.set_input("doors_closed", True)
    rig.sim.faults.step_fault.clear()
    rig.sim.faults.stuck.clear()
    rig.sim.faults.torque_heads = 0
    for _ in range(20):
        if rig.core.swap is None or rig.core.mode == Mode.MANUAL:
            break
        _advance(rig, 2.0)
        for cmd in (ResetFault(), RetryStep()):
            try:
                rig.feed(cmd)
            except Rejected:
                pass
        _advance(rig, 200.0)
    if rig.core.mode != Mode.MANUAL:
        assert rig.core.swap is None, status_view(rig.core)
        assert rig.has("swap.completed") or rig.has("swap.failed")
    check(rig)
