"""The swap core's state: its mode, the swap in progress and the run of each of its steps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    IDLE = "idle"  # no swap
    RUNNING = "running"  # steps start as soon as they may
    HELD = "held"  # a fault: running steps are tracked, nothing new starts; operator decides
    MANUAL = "manual"  # handed to an attendant: both units halted


class StepStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"  # intent journalled, command sent, not finished
    DONE = "done"
    FAILED = "failed"


@dataclass
class StepRun:
    status: StepStatus = StepStatus.PENDING
    seq: int = 0
    attempts: int = 0
    started_at: float = 0.0
    last_sent: float = -math.inf
    moves: list[list[str]] = field(default_factory=list)  # [pack_id, from, to]
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
    kind: str  # "swap" or "refit"
    plan: list[str]
    deps: dict[str, list[str]]
    runs: dict[str, StepRun]
    outputs_off: set[str] = field(default_factory=set)
    blocked: dict[str, list[str]] = field(default_factory=dict)
    hold: dict[str, str] | None = None
    unlock_started: bool = False
    lift_started: bool = False
    off_requested: set[str] = field(default_factory=set)  # not journalled: asked again on restore
