"""Payload models of the MQTT contract: the single source of truth for code, tests and the
AsyncAPI document (`swapd asyncapi`). Units are in field names; `ts` is RFC 3339 UTC."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from drivers.can.events import Phase
from drivers.core.quality import Quality
from edge.alarms import Severity
from edge.command_types import ErrorCode

__all__ = ["ErrorCode"]  # re-exported: the contract's result codes live with Rejected
from edge.scheduler.core import GridMode
from edge.state import OperatingMode
from edge.swap.model import Mode as SwapMode

Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$",
        json_schema_extra={"format": "date-time"},
        description="RFC 3339 UTC",
    ),
]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- status -------------------------------------------------------------------------------


class StatusPayload(Wire):
    """Retained. The birth on every connect has `online: true`; the will and an orderly stop
    publish `online: false`."""

    online: bool
    boot_id: str
    version: str
    ts: Timestamp | None = Field(None, description="null in the will (set at connect time)")


# ---- telemetry (what the station hands over; the wire message adds ts) ---------------------


class AlarmRef(Wire):
    code: str
    source: str
    severity: Severity
    raised_at: Timestamp


class PlanStep(Wire):
    ends_in_s: float = Field(ge=0, description="the step ends this many seconds from now")
    power_kw: float = Field(description="planned grid power during the step")


class StationTelemetry(Wire):
    grid_power_kw: float = Field(description="import from the grid positive, export negative")
    grid_cap_kw: float = Field(ge=0, description="the station's connection cap")
    grid_limit_kw: float = Field(ge=0, description="the limit in force now")
    remote_limit_kw: float | None = Field(None, ge=0, description="set_power_limit lease")
    remote_limit_valid_until: Timestamp | None = None
    operating_mode: OperatingMode
    grid_mode: GridMode
    grid_reason: str
    tariff_period: str
    packs_total: int = Field(ge=0)
    packs_full: int = Field(ge=0)
    packs_charging: int = Field(ge=0)
    packs_unavailable: int = Field(ge=0)
    active_alarms: list[AlarmRef] = []
    grid_plan: list[PlanStep] | None = Field(
        None,
        description="predictive policy only: planned grid power for the next hours, one entry "
        "per plan step (15 min), ending ends_in_s seconds from this message",
    )


class SlotTelemetry(Wire):
    pack_id: str | None = None
    soc_pct: float | None = Field(None, ge=0, le=100)
    voltage_v: float | None = None
    current_a: float | None = Field(None, description="positive into the pack")
    power_kw: float | None = Field(None, description="positive into the pack")
    temp_max_c: float | None = None
    temp_min_c: float | None = None
    session_phase: Phase = Field(description="GB/T 27930 session phase")
    charger_state: str = Field(description="charger state from its register map")
    available: bool = True
    in_service: bool = Field(True, description="false while an operator took the slot out")
    quality: Quality = Quality.GOOD
    invalid: list[str] = Field(
        [], description="fields published null because the value did not fit (quality bad)"
    )


class RobotTelemetry(Wire):
    sequence_state: SwapMode = Field(description="the swap sequence's mode")
    swap_id: str | None = None
    step: str | None = None
    axes_mm: dict[str, float] = {}
    interlocks: dict[str, bool] = Field({}, description="interlock inputs by name")
    quality: Quality = Quality.GOOD


class StationTelemetryMessage(StationTelemetry):
    ts: Timestamp


class SlotTelemetryMessage(SlotTelemetry):
    slot_id: Ident
    ts: Timestamp


class RobotTelemetryMessage(RobotTelemetry):
    ts: Timestamp


# ---- events -------------------------------------------------------------------------------


class EventType(StrEnum):
    """Every event of the contract: `<room>.<name>`, published on `event/<room>/<name>`."""

    SWAP_STARTED = "swap.started"
    SWAP_STEP = "swap.step"
    SWAP_COMPLETED = "swap.completed"
    SWAP_FAILED = "swap.failed"
    ALARM_RAISED = "alarm.raised"
    ALARM_CLEARED = "alarm.cleared"
    CHARGE_STARTED = "charge.started"
    CHARGE_STOPPED = "charge.stopped"
    OUTBOX_OVERFLOW = "outbox.overflow"
    COMMAND_EXECUTED = "command.executed"
    MODE_CHANGED = "mode.changed"
    SWAP_FAULT = "swap.fault"
    SWAP_RECOVERY = "swap.recovery"
    SWAP_PACK_MISMATCH = "swap.pack_mismatch"
    INVENTORY_CORRECTED = "inventory.corrected"


class Details(Wire):
    """Event details: exactly the documented fields (a field the contract does not name is
    refused). An optional field not set goes out as null."""


class StepChange(StrEnum):
    STARTED = "started"  # commanded (intent journalled first)
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"  # may not start yet: `missing` says what it waits for


class RecoveryAction(StrEnum):
    RESTART = "restart"  # the daemon restarted and resumed from its journal
    RESET_FAULT = "reset_fault"
    RETRY_STEP = "retry_step"
    REFIT_ORIGINAL = "refit_original"
    MANUAL = "manual"


class MoveRef(Wire):
    model_config = ConfigDict(populate_by_name=True)

    pack_id: str
    source: str = Field(alias="from", description="slot:<id>, vehicle, shuttle, buffer, stacker")
    to: str = Field(description="slot:<id>, vehicle, shuttle, buffer, stacker, or away")


class SwapStarted(Details):
    swap_id: str
    vehicle_id: str | None = None
    pack_type: str | None = None
    announced_pack_id: str | None = Field(None, description="the pack the vehicle says it carries")
    full_pack_id: str | None = Field(None, description="the pack it gets")
    full_slot: str | None = Field(None, description="the slot the full pack comes from")
    store_slot: str | None = Field(None, description="the slot that takes the depleted pack")
    soc_pct: float | None = Field(None, ge=0, le=100, description="SOC of the full pack, chosen")


class SwapStep(Details):
    swap_id: str
    step: str
    state: StepChange
    unit: Literal["vehicle", "rack"] | None = None
    seq: int | None = Field(None, description="the command's sequence counter (not when blocked)")
    attempt: int | None = Field(None, description="started: 1, then 2 on a retry, ...")
    moves: list[MoveRef] | None = Field(None, description="packs the step carries")
    reason: str | None = Field(None, description="failed: why (plc_fault, step_timeout, ...)")
    detail: str | None = Field(None, description="failed: the PLC fault name, the timeout, ...")
    missing: list[str] | None = Field(None, description="blocked: interlocks/requirements open")
    note: str | None = Field(None, description="done: e.g. finished before the halt took effect")


class SwapCompleted(Details):
    swap_id: str
    vehicle_id: str | None = None
    pack_in_id: str | None = Field(None, description="the depleted pack taken into the station")
    pack_out_id: str | None = Field(None, description="the full pack fitted to the vehicle")
    full_slot: str | None = None
    store_slot: str | None = None
    duration_s: float | None = Field(
        None,
        ge=0,
        description="from swap.started to this event (time the daemon was down not counted)",
    )


class SwapFailed(Details):
    swap_id: str
    vehicle_id: str | None = None
    step: str | None = Field(None, description="the step whose fault ended the swap, if one did")
    reason: str = Field(description="original pack refitted, or manual")
    pack_ids: list[str] | None = Field(None, description="the announced and the full pack")


class AlarmDetails(Details):
    code: str
    source: str
    severity: Severity
    text: str
    detail: str = ""
    raised_at: Timestamp


class ChargeStarted(Details):
    slot_id: str
    pack_id: str | None = None


class ChargeStopped(Details):
    slot_id: str
    pack_id: str | None = None
    reason: str = ""
    energy_kwh: float | None = Field(None, description="delivered in this session")


class DroppedRange(Wire):
    """Every seq from first_seq to last_seq (inclusive) of that boot was dropped."""

    boot_id: str
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)


class OutboxOverflow(Details):
    """The disk cap was reached: these stored, never-delivered events were dropped, oldest
    non-alarm first. A seq gap not named here is a loss in transit, not a drop."""

    dropped_count: int = Field(ge=1)
    ranges: list[DroppedRange]


class CommandExecuted(Details):
    cmd_id: str
    command: str
    ok: bool
    error_code: str | None = None


class SwapFault(Details):
    """The swap is held (or, with no swap, the robot side stopped): the operator decides."""

    swap_id: str | None = Field(None, description="null when no swap is in progress")
    reason: str = Field(description="emergency_stop, plc_offline, step_timeout, plc_fault, ...")
    detail: str = ""
    step: str | None = Field(None, description="the step that failed, if one did")
    pack_ids: list[str] | None = Field(None, description="the announced and the full pack")
    mode: SwapMode | None = Field(None, description="the sequence's mode after the fault")


class SwapRecovery(Details):
    swap_id: str | None = Field(None, description="null when no swap is in progress")
    action: RecoveryAction
    steps: list[str] | None = Field(None, description="retry_step, refit_original: the steps run")
    cleared: str | None = Field(None, description="reset_fault: the alarm code it cleared")
    mode: SwapMode | None = Field(None, description="restart: the mode resumed")
    latched: bool | None = Field(None, description="restart: emergency stop still latched")


class SwapPackMismatch(Details):
    swap_id: str | None = Field(None, description="the swap that stored the pack, if running")
    slot_id: str
    announced_pack_id: str | None = Field(None, description="what the vehicle announced")
    pack_id: str = Field(description="what the docked pack says it is (BRM)")
    pack_type: str | None = Field(None, description="its type (BRM), if known")


class InventoryCorrected(Details):
    swap_id: str | None = Field(None, description="the swap in progress, if any")
    pack_id: str
    place: str | None = Field(
        description="slot:<id>, vehicle, shuttle, buffer, stacker, or null (left the station)"
    )
    previous: str | None = Field(None, description="where it was recorded before (null: new)")
    source: Literal["operator", "docked"] | None = Field(
        None, description="operator: inventory_set; docked: a slot found a pack it did not know"
    )


class ModeChanged(Details):
    operating_mode: OperatingMode
    source: str = Field(description="remote, local or station")


EVENT_DETAILS: dict[EventType, type[Details]] = {
    EventType.SWAP_STARTED: SwapStarted,
    EventType.SWAP_STEP: SwapStep,
    EventType.SWAP_COMPLETED: SwapCompleted,
    EventType.SWAP_FAILED: SwapFailed,
    EventType.ALARM_RAISED: AlarmDetails,
    EventType.ALARM_CLEARED: AlarmDetails,
    EventType.CHARGE_STARTED: ChargeStarted,
    EventType.CHARGE_STOPPED: ChargeStopped,
    EventType.OUTBOX_OVERFLOW: OutboxOverflow,
    EventType.COMMAND_EXECUTED: CommandExecuted,
    EventType.MODE_CHANGED: ModeChanged,
    EventType.SWAP_FAULT: SwapFault,
    EventType.SWAP_RECOVERY: SwapRecovery,
    EventType.SWAP_PACK_MISMATCH: SwapPackMismatch,
    EventType.INVENTORY_CORRECTED: InventoryCorrected,
}
# Kept when the outbox reaches its disk cap; everything else goes first.
PROTECTED_EVENT_TYPES = frozenset(
    {EventType.ALARM_RAISED, EventType.ALARM_CLEARED, EventType.OUTBOX_OVERFLOW}
)


class EventMessage(Wire):
    msg_id: str = Field(pattern=r"^[0-9a-f]+:[1-9][0-9]*$", description="<boot_id>:<seq>")
    type: str
    ts: Timestamp
    replayed: bool = Field(description="true when sent from the store after a reconnect")
    details: dict[str, Any]


def _event_message_model(event_type: str, details: type[Details]) -> type[EventMessage]:
    name = "Event_" + event_type.replace(".", "_")
    return create_model(
        name,
        __base__=EventMessage,
        type=(Literal[event_type], ...),  # type: ignore[arg-type]
        details=(details, ...),
    )


EVENT_MESSAGES: dict[str, type[EventMessage]] = {
    t: _event_message_model(t, d) for t, d in EVENT_DETAILS.items()
}


# ---- commands -----------------------------------------------------------------------------


class Params(Wire):
    pass


class SetPowerLimitParams(Params):
    """A lease: the station falls back to its own limit at valid_until."""

    power_kw: float = Field(ge=0, le=100_000)
    valid_until: AwareDatetime


class SetModeParams(Params):
    mode: OperatingMode


class ResetFaultParams(Params):
    reason: str = Field("", max_length=200)


SwapId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        description="the swap this acts on; a command naming another (stale) swap is rejected",
    ),
]
SlotId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class RetryStepParams(Params):
    swap_id: SwapId


class RefitOriginalParams(Params):
    swap_id: SwapId


class ManualParams(Params):
    """`enabled: false` (leaving manual) is its own policy entry, `end_manual`."""

    enabled: bool
    swap_id: SwapId


class StatusParams(Params):
    pass


class InventorySetParams(Params):
    pack_id: str = Field(min_length=1, max_length=128)
    # The shape is checked here, with the other params (before any mode rule); whether the
    # slot exists is the station's word.
    place: str | None = Field(
        pattern=r"^(slot:[A-Za-z0-9_-]{1,64}|vehicle|shuttle|buffer|stacker)$",
        description="slot:<id>, vehicle, shuttle, buffer, stacker, or null (not in the station)",
    )
    pack_type: str | None = Field(None, min_length=1, max_length=64)


class ResetSlotParams(Params):
    """Clear one slot's BMS-lost latch (after re-plugging its pack)."""

    slot_id: SlotId


class DisableSlotParams(Params):
    """Take a slot out of service: output off, no pack taken from or stored into it; kept
    across restarts."""

    slot_id: SlotId
    reason: str = Field("", max_length=200)


class EnableSlotParams(Params):
    slot_id: SlotId


class RefreshParams(Params):
    pass


class StartSwapParams(Params):
    vehicle_id: str = Field(min_length=1, max_length=64)
    pack_type: str = Field(min_length=1, max_length=64)
    announced_pack_id: str | None = Field(
        None,
        max_length=128,
        description="the pack the vehicle says it carries (checked when docked)",
    )


COMMAND_PARAMS: dict[str, type[Params]] = {
    "status": StatusParams,
    "inventory_set": InventorySetParams,
    "reset_slot": ResetSlotParams,
    "disable_slot": DisableSlotParams,
    "enable_slot": EnableSlotParams,
    "set_power_limit": SetPowerLimitParams,
    "set_mode": SetModeParams,
    "reset_fault": ResetFaultParams,
    "retry_step": RetryStepParams,
    "refit_original": RefitOriginalParams,
    "manual": ManualParams,
    "refresh": RefreshParams,
    "start_swap": StartSwapParams,
}


# Commands of the MQTT contract (`status` is for the local operator only).
MQTT_COMMANDS = tuple(n for n in COMMAND_PARAMS if n != "status")


class CommandEnvelope(Wire):
    cmd_id: str = Field(min_length=1, max_length=128)
    expires_at: AwareDatetime
    params: dict[str, Any] = {}
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="who sends (logged, and the key of the per-client rate limit)",
    )
    key_id: str | None = Field(
        None, min_length=1, max_length=64, description="the key that made `sig`"
    )
    sig: str | None = Field(
        None,
        max_length=128,
        description="base64 Ed25519 signature over station id, command, cmd_id, expires_at "
        "and params (docs/mqtt.md)",
    )


def _command_message_model(name: str, params: type[Params]) -> type[CommandEnvelope]:
    return create_model("Command_" + name, __base__=CommandEnvelope, params=(params, ...))


COMMAND_MESSAGES: dict[str, type[CommandEnvelope]] = {
    n: _command_message_model(n, COMMAND_PARAMS[n]) for n in MQTT_COMMANDS
}


class CommandError(Wire):
    code: ErrorCode
    message: str


class CommandResult(Wire):
    cmd_id: str | None = Field(description="null when the command was too broken to carry one")
    ok: bool
    error: CommandError | None
    ts: Timestamp


# ---- simulator fault injection ------------------------------------------------------------


class SimFault(Wire):
    """`<root>/sim/<device_id>/fault`: inject (or clear) a fault in a running simulator."""

    fault: str = Field(min_length=1, max_length=64)
    clear: bool = False
    params: dict[str, Any] = {}
