"""The swap core's state: its mode, the swap in progress and the run of each of its steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from edge.swap.inventory import Place, parse_place


class Mode(StrEnum):
    IDLE = "idle"  # no swap
    RUNNING = "running"  # steps start as soon as they may
    HELD = "held"  # a fault: running steps are tracked, nothing new starts; operator decides
    MANUAL = "manual"  # handed to an attendant: both units halted


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

    def row_json(self) -> dict[str, str]:
        """As in `swap.step` events."""
        pack_id, source, to = self.row()
        return {"pack_id": pack_id, "from": source, "to": to}

    @classmethod
    def from_row(cls, row: list[str]) -> Move:
        pack_id, source, to = row
        return cls(pack_id, parse_place(source), None if to == AWAY else parse_place(to))


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
    started_at: float = 0.0
    last_sent: float = -math.inf
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
    outputs_off: set[str] = field(default_factory=set)
    blocked: dict[str, list[str]] = field(default_factory=dict)
    hold: Hold | None = None
    unlock_started: bool = False
    lift_started: bool = False
    off_requested: set[str] = field(default_factory=set)  # not journalled: asked again on restore
