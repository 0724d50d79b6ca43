"""The swap core's snapshot: its whole state as JSON, committed to the journal with every
transition's records, and the core rebuilt from it after a restart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from drivers.robot.contract import UNITS
from edge.swap.inventory import Inventory
from edge.swap.messages import PackIdentity
from edge.swap.model import Hold, Mode, Move, ShuttleAt, StepRun, StepStatus, Swap, SwapKind
from edge.swap.sequence import SwapSequence
from edge.swap.steps import StepGraph


def take(core: SwapSequence) -> dict[str, Any]:
    sw = core.swap
    return {
        "version": 1,
        "mode": core.mode.value,
        "latched": core.latched,
        "halted": sorted(core.halted),
        "seq": dict(core.seq),
        "acked": dict(core.acked),
        "shuttle_at": core.shuttle_at,
        "swap_counter": core.swap_counter,
        "awaiting_dock": core.awaiting_dock,
        "pending_docks": {k: [v.pack_id, v.pack_type] for k, v in core.pending_docks.items()},
        "alarms": sorted([list(a) for a in core.alarms]),
        "inventory": core.inventory.to_json(),
        "swap": None
        if sw is None
        else {
            "swap_id": sw.swap_id,
            "vehicle_id": sw.vehicle_id,
            "pack_type": sw.pack_type,
            "announced_pack_id": sw.announced_pack_id,
            "full_pack_id": sw.full_pack_id,
            "full_slot": sw.full_slot,
            "store_slot": sw.store_slot,
            "kind": sw.kind,
            "plan": sw.plan,
            "deps": sw.deps,
            "runs": {
                k: {
                    "status": r.status.value,
                    "seq": r.seq,
                    "attempts": r.attempts,
                    "moves": [m.row() for m in r.moves],
                    "reason": r.reason,
                }
                for k, r in sw.runs.items()
            },
            "outputs_off": sorted(sw.outputs_off),
            "hold": None if sw.hold is None else asdict(sw.hold),
            "unlock_started": sw.unlock_started,
            "lift_started": sw.lift_started,
        },
    }


def restore(
    graph: StepGraph, slot_numbers: Mapping[str, int], snap: dict[str, Any]
) -> SwapSequence:
    core = SwapSequence(graph, slot_numbers)
    core.mode = Mode(snap["mode"])
    core.latched = bool(snap["latched"])
    core.halted = frozenset(snap["halted"])
    core.seq = {u: int(snap["seq"].get(u, 0)) for u in UNITS}
    core.acked = {u: int(snap.get("acked", {}).get(u, 0)) for u in UNITS}
    core.shuttle_at = ShuttleAt(snap["shuttle_at"])
    core.swap_counter = int(snap["swap_counter"])
    core.awaiting_dock = {k: list(v) for k, v in snap["awaiting_dock"].items()}
    core.pending_docks = {k: PackIdentity(v[0], v[1]) for k, v in snap["pending_docks"].items()}
    core.alarms = {(a[0], a[1]) for a in snap["alarms"]}
    core.inventory = Inventory.from_json(frozenset(core.slot_numbers), snap["inventory"])
    s = snap["swap"]
    if s is not None:
        core.swap = Swap(
            swap_id=s["swap_id"],
            vehicle_id=s["vehicle_id"],
            pack_type=s["pack_type"],
            announced_pack_id=s["announced_pack_id"],
            full_pack_id=s["full_pack_id"],
            full_slot=s["full_slot"],
            store_slot=s["store_slot"],
            kind=SwapKind(s["kind"]),
            plan=list(s["plan"]),
            deps={k: list(v) for k, v in s["deps"].items()},
            runs={
                k: StepRun(
                    StepStatus(r["status"]),
                    int(r["seq"]),
                    int(r["attempts"]),
                    moves=[Move.from_row(m) for m in r["moves"]],
                    reason=r["reason"],
                )
                for k, r in s["runs"].items()
            },
            outputs_off=set(s["outputs_off"]),
            hold=None if s["hold"] is None else Hold(**s["hold"]),
            unlock_started=bool(s["unlock_started"]),
            lift_started=bool(s["lift_started"]),
        )
    return core
