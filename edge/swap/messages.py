"""The swap core's messages: the events it handles and the actions it returns.

Events come from the PLC poll, the slot controllers and the operator; actions are carried out
by the coordinator (journal first, then PLC writes, slot-output requests, events and alarms).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.core.alarm_sink import ClearAlarm, RaiseAlarm
from drivers.robot.contract import RobotStatus
from edge.command_types import Rejected as CommandRejected
from edge.swap.choice import SlotView
from edge.swap.inventory import Place
from edge.swap.journal import JournalRecord
from edge.telemetry.models import Details, EventType

# ----- events in


@dataclass(frozen=True, slots=True)
class PackIdentity:
    pack_id: str
    pack_type: str | None = None


@dataclass(frozen=True, slots=True)
class StartSwap:
    vehicle_id: str
    pack_type: str
    announced_pack_id: str
    slots: tuple[SlotView, ...]


@dataclass(frozen=True, slots=True)
class PlcStatus:
    status: RobotStatus


@dataclass(frozen=True, slots=True)
class PlcOffline:
    reason: str


@dataclass(frozen=True, slots=True)
class SlotOutputOff:
    slot_id: str


@dataclass(frozen=True, slots=True)
class SlotOutputFailed:
    slot_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PackDocked:
    slot_id: str
    identity: PackIdentity


@dataclass(frozen=True, slots=True)
class ResetFault:
    pass


@dataclass(frozen=True, slots=True)
class RetryStep:
    pass


@dataclass(frozen=True, slots=True)
class RefitOriginal:
    pass


@dataclass(frozen=True, slots=True)
class Manual:
    end: bool = False


@dataclass(frozen=True, slots=True)
class CorrectInventory:
    pack_id: str
    place: Place | None
    pack_type: str | None = None


Event = (
    StartSwap
    | PlcStatus
    | PlcOffline
    | SlotOutputOff
    | SlotOutputFailed
    | PackDocked
    | ResetFault
    | RetryStep
    | RefitOriginal
    | Manual
    | CorrectInventory
)

# ----- actions out


@dataclass(frozen=True, slots=True)
class JournalWrite:
    record: JournalRecord


@dataclass(frozen=True, slots=True)
class CommandStep:
    unit: str
    step_code: int
    arg: int
    seq: int
    step_id: str


@dataclass(frozen=True, slots=True)
class SetHalt:
    units: frozenset[str]


@dataclass(frozen=True, slots=True)
class RequestOutputOff:
    slot_id: str


@dataclass(frozen=True, slots=True)
class RequestAllOutputsOff:
    pass


@dataclass(frozen=True, slots=True)
class ReleaseOutputs:
    """The e-stop latch was reset with the chain healthy: slots may charge again."""


@dataclass(frozen=True, slots=True)
class PackSeated:
    """A step put a pack into this rack slot: its session may start."""

    slot_id: str


@dataclass(frozen=True, slots=True)
class PackRemoved:
    """A step took the pack out of this rack slot (its output was confirmed off before)."""

    slot_id: str


@dataclass(frozen=True, slots=True)
class Emit:
    """An event of the contract: `details` is the payload model of `type`."""

    type: EventType
    details: Details


Action = (
    JournalWrite
    | CommandStep
    | SetHalt
    | RequestOutputOff
    | RequestAllOutputsOff
    | ReleaseOutputs
    | PackSeated
    | PackRemoved
    | Emit
    | RaiseAlarm  # the shared kernel's alarm actions (drivers.core.alarm_sink)
    | ClearAlarm
)


class Rejected(CommandRejected):
    """The house's one refusal (`edge.command_types.Rejected`), message first for the core's
    many `rejected` answers. Nothing moved."""

    def __init__(self, message: str, code: str = "rejected") -> None:
        super().__init__(code, message)
