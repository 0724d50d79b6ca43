"""The operator's commands on a swap sequence: reset a fault, retry the held step, refit the
original pack, hand over to (and take back from) manual control, correct the inventory.

Each takes the sequence, checks the command is allowed now (raises Rejected, nothing changed)
and appends its actions to `out`; `SwapSequence.handle` calls them, the step engine then runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.robot.contract import UNITS, UnitState
from edge.alarms import AlarmCode
from edge.swap.inventory import (
    HANDLING_PLACES,
    Handling,
    InventoryError,
    Place,
    SlotPlace,
    is_valid_place,
)
from edge.swap.journal import RecordKind
from edge.swap.messages import Action, CorrectInventory, Rejected, ReleaseOutputs
from edge.swap.model import FaultReason, Mode, StepRun, StepStatus, Swap, SwapKind
from edge.swap.recovery import HOLD_ALARMS, plan_refit, retry_steps
from edge.telemetry.models import EventType, InventoryCorrected, RecoveryAction, SwapRecovery

if TYPE_CHECKING:
    from edge.swap.sequence import SwapSequence


def _text(place: Place | None) -> str | None:
    return None if place is None else str(place)


def _require_operable(seq: SwapSequence) -> Swap:
    sw = seq.swap
    if sw is None:
        raise Rejected("no swap in progress")
    if seq.latched:
        raise Rejected("emergency stop latched: reset-fault first")
    if not seq.plc_online or seq.plc is None:
        raise Rejected("robot PLC offline")
    return sw


def reset_fault(seq: SwapSequence, out: list[Action]) -> None:
    if (AlarmCode.ROBOT_PLC_RESTARTED, "robot") in seq.alarms and seq.plc is not None:
        # the operator has checked the robot: accept the PLC's counters as they are now
        seq.acked = {u: seq.plc.units[u].ack_seq for u in UNITS}
        seq._clear(out, AlarmCode.ROBOT_PLC_RESTARTED, "robot")
        seq._journal(out, RecordKind.PLC_RESTART_ACKNOWLEDGED)
        seq._emit(
            out,
            EventType.SWAP_RECOVERY,
            SwapRecovery(
                swap_id=seq._swap_id(),
                action=RecoveryAction.RESET_FAULT,
                cleared=AlarmCode.ROBOT_PLC_RESTARTED,
            ),
        )
        if not seq.latched:
            return
    if not seq.latched:
        raise Rejected("no emergency-stop latch to reset")
    if not seq.plc_online or seq.plc is None:
        raise Rejected("robot PLC offline: cannot see the emergency-stop chain")
    if not seq.plc.inputs.get("estop_chain_healthy", False):
        raise Rejected("emergency-stop chain still open")
    seq.latched = False
    seq._clear(out, AlarmCode.SAFETY_EMERGENCY_STOP, "robot")
    out.append(ReleaseOutputs())
    seq._journal(out, RecordKind.UNLATCHED)
    seq._emit(
        out,
        EventType.SWAP_RECOVERY,
        SwapRecovery(swap_id=seq._swap_id(), action=RecoveryAction.RESET_FAULT),
    )
    if seq.swap is None:
        seq._set_halt(frozenset(), out)


def _clear_hold_alarms(seq: SwapSequence, out: list[Action]) -> None:
    for code, source in sorted(seq.alarms):
        if code in HOLD_ALARMS:
            seq._clear(out, code, source)


def retry_step(seq: SwapSequence, now: float, out: list[Action]) -> None:
    sw = _require_operable(seq)
    if seq.mode != Mode.HELD:
        raise Rejected(f"swap is {seq.mode.value}, not held")
    assert seq.plc is not None
    if seq.inventory.problems() or (AlarmCode.INVENTORY_INCONSISTENT, "inventory") in seq.alarms:
        raise Rejected("inventory inconsistent: correct it first")
    if (AlarmCode.ROBOT_PLC_RESTARTED, "robot") in seq.alarms:
        raise Rejected("robot PLC restarted: check the robot and inventory, then reset-fault")
    failed = retry_steps(sw, seq.plc, seq.graph)
    for sid in failed:
        sw.runs[sid].status = StepStatus.PENDING
    for slot in (sw.full_slot, sw.store_slot):
        sw.off_requested.discard(slot)  # ask again even if an earlier request hangs
        seq._request_off(slot, out)
    _resume(seq, sw, RecoveryAction.RETRY_STEP, failed, out)


def _resume(
    seq: SwapSequence, sw: Swap, action: RecoveryAction, steps: list[str], out: list[Action]
) -> None:
    """A held swap runs again (retry or refit): hold and halt lifted, the recovery journalled
    and published."""
    sw.hold = None
    seq.mode = Mode.RUNNING
    _clear_hold_alarms(seq, out)
    if seq.halted:
        seq._set_halt(frozenset(), out)
    seq._journal(out, RecordKind.RECOVERY, action=action, steps=steps)
    seq._emit(
        out,
        EventType.SWAP_RECOVERY,
        SwapRecovery(swap_id=sw.swap_id, action=action, steps=steps),
    )


def refit_original(seq: SwapSequence, now: float, out: list[Action]) -> None:
    sw = _require_operable(seq)
    if seq.mode != Mode.HELD:
        raise Rejected(f"swap is {seq.mode.value}, not held")
    if sw.kind != SwapKind.SWAP:
        raise Rejected("already refitting the original pack")
    assert seq.plc is not None
    if any(sw.runs[s].status == StepStatus.ACTIVE for s in sw.plan) or any(
        u.state == UnitState.BUSY for u in seq.plc.units.values()
    ):
        raise Rejected("a step is still running")
    chain, deps = plan_refit(sw, seq.inventory, seq.shuttle_at)
    sw.kind = SwapKind.REFIT
    sw.plan = chain
    sw.deps = deps
    sw.runs = {s: StepRun() for s in chain}
    sw.blocked = {}
    _resume(seq, sw, RecoveryAction.REFIT_ORIGINAL, chain, out)


def manual(seq: SwapSequence, end: bool, now: float, out: list[Action]) -> None:
    sw = seq.swap
    if not end:
        if sw is None:
            raise Rejected("no swap in progress")
        if seq.mode == Mode.MANUAL:
            raise Rejected("already in manual mode")
        for sid in sw.plan:
            if sw.runs[sid].status == StepStatus.ACTIVE:
                sw.runs[sid].status = StepStatus.FAILED
                sw.runs[sid].reason = FaultReason.MANUAL
        seq.mode = Mode.MANUAL
        seq._set_halt(frozenset(UNITS), out)
        seq._journal(out, RecordKind.RECOVERY, action=FaultReason.MANUAL)
        seq._emit(
            out,
            EventType.SWAP_RECOVERY,
            SwapRecovery(swap_id=sw.swap_id, action=RecoveryAction.MANUAL),
        )
        return
    if sw is None or seq.mode != Mode.MANUAL:
        raise Rejected("not in manual mode")
    problems = seq.inventory.problems()
    if problems:
        raise Rejected(f"inventory inconsistent: {'; '.join(problems)}")
    busy = [
        p
        for p in (Handling.SHUTTLE, Handling.BUFFER, Handling.STACKER)
        if seq.inventory.at(p) is not None
    ]
    if busy:
        raise Rejected(f"packs still recorded at {', '.join(busy)}: correct the inventory")
    on_vehicle = seq.inventory.at(Handling.VEHICLE)
    if on_vehicle is not None:
        seq.inventory.remove(on_vehicle.pack_id)
        seq._journal(out, RecordKind.PACK_DEPARTED, pack_id=on_vehicle.pack_id)
    _clear_hold_alarms(seq, out)
    seq._clear(out, AlarmCode.INVENTORY_INCONSISTENT, "inventory")
    seq.mode = Mode.HELD  # _finish resets to IDLE
    seq._finish(out, now, failed=True, reason=FaultReason.MANUAL)


def correct_inventory(seq: SwapSequence, ev: CorrectInventory, out: list[Action]) -> None:
    # Params before mode rules, as for every command: a bad place is invalid_params always.
    if ev.place is not None and not is_valid_place(ev.place, seq.inventory.slots):
        raise Rejected(
            f"unknown place {str(ev.place)!r} (slot:<id>, {', '.join(HANDLING_PLACES)})",
            "invalid_params",
        )
    if seq.mode == Mode.RUNNING:
        raise Rejected("swap running: hold it (fault) or take manual control first")
    if seq.swap is not None and any(
        seq.swap.runs[s].status == StepStatus.ACTIVE for s in seq.swap.plan
    ):
        raise Rejected("a step is still running")
    old = seq.inventory.get(ev.pack_id)
    try:
        seq.inventory.set_place(ev.pack_id, ev.place, ev.pack_type)
    except InventoryError as e:
        raise Rejected(str(e), "invalid_params") from None
    seq._journal(
        out,
        RecordKind.INVENTORY_CORRECTED,
        pack_id=ev.pack_id,
        place=_text(ev.place),
        pack_type=ev.pack_type,
        previous=_text(old.place if old else None),
    )
    seq._emit(
        out,
        EventType.INVENTORY_CORRECTED,
        InventoryCorrected(
            swap_id=seq._swap_id(),
            pack_id=ev.pack_id,
            place=_text(ev.place),
            previous=_text(old.place if old else None),
            source="operator",
        ),
    )
    if not seq.inventory.problems():
        seq._clear(out, AlarmCode.INVENTORY_INCONSISTENT, "inventory")
    for place in {ev.place, old.place if old else None}:
        if isinstance(place, SlotPlace):
            seq._clear(out, AlarmCode.SWAP_PACK_MISMATCH, place.slot_id)
            seq.awaiting_dock.pop(place.slot_id, None)
