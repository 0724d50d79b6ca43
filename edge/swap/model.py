"""The swap core's state: its mode, the swap in progress and the run of each of its steps.

The snapshot (edge/swap/snapshot.py) is these dataclasses as they are; a field marked
`Transient` is process-local and not persisted (it is rebuilt on restore).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, PlainSerializer
from pydantic_core import CoreSchema, core_schema

from edge.swap.inventory import Place, parse_place

Transient = Field(exclude=True)
SortedSet = Annotated[set[str], PlainSerializer(sorted, return_type=list[str])]


class Mode(StrEnum):
    IDLE = "idle"  # no swap
    RUNNING = "running"  # steps start as soon as they may
    HELD = "held"  # a fault: running steps are tracked, nothing new starts; operator decides
    MANUAL = "manual"  # handed to an attendant: both units halted


class FaultReason(StrEnum):
    """Why a swap is held or a step failed (a PLC fault also names its fault code)."""

    OUTPUT_OFF_FAILED = "output_off_failed"
    STEP_TIMEOUT = "step_timeout"
    INTERLOCK_LOST = "interlock_lost"
    PLC_FAULT = "plc_fault"
    TORQUE_OUT_OF_WINDOW = "torque_out_of_window"
    INVENTORY_INCONSISTENT = "inventory_inconsistent"
    PLC_OFFLINE = "plc_offline"
    PLC_STALE = "plc_stale"
    PLC_RESTARTED = "plc_restarted"
    EMERGENCY_STOP = "emergency_stop"
    MANUAL = "manual"


class SwapKind(StrEnum):
    SWAP = "swap"  # the vehicle gets a full pack
    REFIT = "refit"  # recovery: the vehicle gets its own pack back (ends as swap.failed)


class ShuttleAt(StrEnum):
    """Where the shuttle stands: under the vehicle or at the rack's hand-off."""

    VEHICLE = "vehicle"
    HANDOFF = "handoff"


class StepStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"  # intent journalled, command sent, not finished
    DONE = "done"
    FAILED = "failed"


AWAY = "away"  # a move's target in files: the pack leaves the station


@dataclass(frozen=True, slots=True)
class Move:
    """One pack moved by a step; `to` None: it leaves the station (with the vehicle)."""

    pack_id: str
    source: Place
    to: Place | None

    def row(self) -> list[str]:
        """As journalled: `[pack_id, from, to]`, "away" for None."""
        return [self.pack_id, str(self.source), AWAY if self.to is None else str(self.to)]

    @classmethod
    def from_row(cls, row: list[str]) -> Move:
        pack_id, source, to = row
        return cls(pack_id, parse_place(source), None if to == AWAY else parse_place(to))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # persisted as its journal row
        return core_schema.no_info_after_validator_function(
            cls.from_row,
            core_schema.list_schema(core_schema.str_schema(), min_length=3, max_length=3),
            serialization=core_schema.plain_serializer_function_ser_schema(cls.row),
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a swap is held: the operator decides (retry, refit, manual)."""

    reason: str
    step: str
    detail: str


@dataclass
class StepRun:
    status: StepStatus = StepStatus.PENDING
    seq: int = 0
    attempts: int = 0
    started_at: Annotated[float, Transient] = 0.0
    last_sent: Annotated[float, Transient] = -math.inf
    moves: list[Move] = field(default_factory=list)
    reason: str = ""


@dataclass
class Swap:
    swap_id: str
    vehicle_id: str
    pack_type: str
    announced_pack_id: str
    full_pack_id: str
    full_slot: str
    store_slot: str
    kind: SwapKind
    plan: list[str]
    deps: dict[str, list[str]]
    runs: dict[str, StepRun]
    outputs_off: SortedSet = field(default_factory=set)
    blocked: Annotated[dict[str, list[str]], Transient] = field(default_factory=dict)
    hold: Hold | None = None
    unlock_started: bool = False
    lift_started: bool = False
    fault_step: str | None = None  # the last step that failed: swap.failed names it
    elapsed_s: float = 0.0  # time worked on it, as of the last core call (restart-proof)
    started_at: Annotated[float, Transient] = 0.0  # monotonic: now - elapsed_s after a restart
    # asked again on restore
    off_requested: Annotated[set[str], Transient] = field(default_factory=set)
