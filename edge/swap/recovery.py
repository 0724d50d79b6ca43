"""Recovery planning for a held swap: which steps a retry restarts, and the refit chain that
puts the original pack back on the vehicle. Pure: the sequence applies the plans."""

from __future__ import annotations

from drivers.robot.contract import RobotStatus, UnitState
from edge.alarms import AlarmCode
from edge.swap.inventory import Handling, Inventory, SlotPlace
from edge.swap.messages import Rejected
from edge.swap.model import ShuttleAt, StepStatus, Swap
from edge.swap.steps import StepGraph

# alarms of a held swap that an operator's recovery (retry, refit, manual end) clears
HOLD_ALARMS = (
    AlarmCode.ROBOT_STEP_FAULT,
    AlarmCode.ROBOT_STEP_TIMEOUT,
    AlarmCode.ROBOT_INTERLOCK_LOST,
)


def retry_steps(sw: Swap, plc: RobotStatus, graph: StepGraph) -> list[str]:
    """The failed steps a retry restarts; raises Rejected while one of them may not run."""
    failed = [s for s in sw.plan if sw.runs[s].status == StepStatus.FAILED]
    for sid in failed:
        st = graph.step(sid)
        if plc.units[st.unit].state == UnitState.BUSY:
            raise Rejected(f"{st.unit} unit still busy")
        lost = [i for i in st.interlocks if not plc.inputs.get(i, False)]
        if lost:
            raise Rejected(f"{sid}: interlocks open: {', '.join(lost)}")
    return failed


def plan_refit(
    sw: Swap, inventory: Inventory, shuttle_at: ShuttleAt
) -> tuple[list[str], dict[str, list[str]]]:
    """The refit chain from where the packs are now, and each step's dependencies. Raises
    Rejected when refitting is not the way back (retry-step or manual is)."""
    orig = inventory.get(sw.announced_pack_id)
    full = inventory.get(sw.full_pack_id)
    if orig is None:
        raise Rejected("original pack not in the inventory")
    if isinstance(orig.place, SlotPlace):
        raise Rejected("original pack already stored in the rack: use retry-step or manual")
    if full is not None and full.place in (Handling.VEHICLE, Handling.SHUTTLE, Handling.STACKER):
        raise Rejected(f"full pack already on the {full.place}: use retry-step or manual")
    chain: list[str] = []
    if full is not None and full.place == Handling.BUFFER:
        chain.append("refit_put_back")
    place = orig.place
    if place == Handling.BUFFER:
        raise Rejected("original pack at the hand-off buffer: manual")
    if place == Handling.STACKER:
        if shuttle_at != ShuttleAt.HANDOFF:
            chain.append("refit_shuttle_to_handoff")
        chain.append("refit_return")
        place = Handling.SHUTTLE
        chain += ["refit_shuttle_to_vehicle", "refit_raise"]
    elif place == Handling.SHUTTLE:
        if shuttle_at == ShuttleAt.HANDOFF:
            chain.append("refit_shuttle_to_vehicle")
        chain.append("refit_raise")
    if place != Handling.VEHICLE or sw.unlock_started:
        chain += ["refit_lock", "refit_verify"]
    if sw.lift_started:
        chain.append("refit_lower_vehicle")
    chain.append("refit_release")
    deps: dict[str, list[str]] = {}
    prev: str | None = None
    for sid in chain:
        # put_back runs on the rack while the vehicle side refits
        deps[sid] = [] if sid == "refit_put_back" or prev is None else [prev]
        if sid != "refit_put_back":
            prev = sid
    return chain, deps
