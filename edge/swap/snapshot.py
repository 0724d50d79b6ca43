"""The swap core's snapshot: its whole state as JSON, committed to the journal with every
transition's records, and the core rebuilt from it after a restart.

The file form is derived from `CoreState` and the dataclasses of edge/swap/model.py (pydantic
`TypeAdapter`); a field added with a default reads older snapshots unchanged. Format version 1
is what swapd has always written (tests/data/state holds such files).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, TypeAdapter

from drivers.robot.contract import UNITS
from edge.swap.inventory import Inventory, PackRecord
from edge.swap.messages import PackIdentity
from edge.swap.model import Mode, ShuttleAt, Swap
from edge.swap.sequence import SwapSequence
from edge.swap.steps import StepGraph

VERSION = 1


def _identity(value: object) -> PackIdentity:
    if isinstance(value, PackIdentity):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str):
        return PackIdentity(value[0], None if value[1] is None else str(value[1]))
    raise ValueError(f"a pack identity is [pack_id, pack_type], not {value!r}")


# [pack_id, pack_type] in the file
Identity = Annotated[
    PackIdentity,
    PlainValidator(_identity),
    PlainSerializer(lambda p: [p.pack_id, p.pack_type], return_type=list[str | None]),
]
Units = Annotated[frozenset[str], PlainSerializer(sorted, return_type=list[str])]
Alarms = Annotated[
    set[tuple[str, str]],
    PlainSerializer(lambda a: [list(x) for x in sorted(a)], return_type=list[list[str]]),
]


@dataclass
class CoreState:
    """What of `SwapSequence` survives a restart: each field is the attribute of that name."""

    mode: Mode
    latched: bool
    halted: Units
    seq: dict[str, int]
    shuttle_at: ShuttleAt
    swap_counter: int
    awaiting_dock: dict[str, Identity]
    pending_docks: dict[str, Identity]
    alarms: Alarms
    inventory: list[PackRecord]
    swap: Swap | None
    acked: dict[str, int] = field(default_factory=dict)  # not in the first files
    version: int = VERSION


_STATE = TypeAdapter(CoreState)
_DERIVED = ("inventory", "version")  # not plain attributes of the core


def take(core: SwapSequence) -> dict[str, Any]:
    state = CoreState(
        **{f.name: getattr(core, f.name) for f in fields(CoreState) if f.name not in _DERIVED},
        inventory=core.inventory.packs(),
    )
    out: dict[str, Any] = _STATE.dump_python(state, mode="json")
    return out


def restore(
    graph: StepGraph, slot_numbers: Mapping[str, int], snap: Mapping[str, Any]
) -> SwapSequence:
    """Raises ValueError (pydantic's ValidationError) for a snapshot that does not fit."""
    state = _STATE.validate_python(snap)
    if state.version > VERSION:
        raise ValueError(f"snapshot format {state.version} is newer than this swapd reads")
    core = SwapSequence(graph, slot_numbers)
    for f in fields(CoreState):
        if f.name not in _DERIVED:
            setattr(core, f.name, getattr(state, f.name))
    core.seq = {u: state.seq.get(u, 0) for u in UNITS}
    core.acked = {u: state.acked.get(u, 0) for u in UNITS}
    core.inventory = Inventory.of(frozenset(core.slot_numbers), state.inventory)
    return core
