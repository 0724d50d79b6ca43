"""The swap step graph: steps, dependencies and interlock preconditions as data."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.core.datafile import DataFileError, FileRef, load_model, problem_at, read_yaml
from drivers.robot.contract import RobotContract

# Package data: the shipped step graph, `builtin:swap-steps` in a station config.
DEFAULT_STEPS = files("edge.swap") / "swap-steps.yaml"

# A move's ends in the graph: a handling place, this swap's full or store slot, or away (the
# pack leaves with the vehicle); the sequence resolves them to inventory places.
PlaceSymbol = Literal["vehicle", "shuttle", "buffer", "stacker", "full_slot", "store_slot", "away"]
Interlock = Literal[
    "estop_chain_healthy",
    "doors_closed",
    "light_curtain_clear",
    "vehicle_present",
    "vehicle_hv_off",
    "vehicle_immobilised",
]
Requirement = Literal["output_off:full_slot", "output_off:store_slot", "pack_locked_or_clear"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MoveDef(_Strict):
    source: PlaceSymbol = Field(alias="from")
    to: PlaceSymbol


class StepDef(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: Literal["vehicle", "rack"]
    plc_step: str
    after: tuple[str, ...] = ()
    duration_s: float = Field(gt=0)
    timeout_s: float = Field(gt=0)
    arg: Literal["none", "full_slot", "store_slot"] = "none"
    interlocks: tuple[Interlock, ...] = ()
    requires: tuple[Requirement, ...] = ()
    moves: tuple[MoveDef, ...] = ()
    check: Literal["lock_rule"] | None = None


class PackChoice(_Strict):
    soc_min_pct: float = Field(ge=0, le=100)
    soh_min_pct: float = Field(ge=0, le=100)
    temperature_min_c: float
    temperature_max_c: float


class LockingRule(_Strict):
    min_heads_ok: int = Field(ge=1, le=16)


class StepGraphModel(_Strict):
    pack_choice: PackChoice
    locking_rule: LockingRule
    command_resend_s: float = Field(default=1.0, gt=0)
    # Freshness of the PLC's status (issue 12): no step starts on a status older than this, and a
    # running step whose status gets older halts the units; a heartbeat that does not change
    # for heartbeat_timeout_s means a frozen PLC image (same reaction).
    status_max_age_s: float = Field(default=2.0, gt=0)
    heartbeat_timeout_s: float = Field(default=1.0, gt=0)
    steps: tuple[StepDef, ...]
    recovery_steps: tuple[StepDef, ...] = ()

    @model_validator(mode="after")
    def _graph(self) -> StepGraphModel:
        ids = [s.id for s in (*self.steps, *self.recovery_steps)]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate step ids: {sorted(dup)}")
        known = {s.id for s in self.steps}
        for s in self.steps:
            for d in s.after:
                if d not in known:
                    raise ValueError(f"step {s.id!r}: unknown dependency {d!r}")
        _topo_order(self.steps)
        return self


def _topo_order(steps: tuple[StepDef, ...]) -> list[str]:
    deps = {s.id: set(s.after) for s in steps}
    order: list[str] = []
    while deps:
        ready = sorted(i for i, d in deps.items() if not d)
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(deps)}")
        for i in ready:
            order.append(i)
            del deps[i]
        for d in deps.values():
            d.difference_update(ready)
    return order


@dataclass(frozen=True)
class StepGraph:
    """The validated graph plus what the sequence needs to run it."""

    model: StepGraphModel
    contract: RobotContract

    @property
    def steps(self) -> tuple[StepDef, ...]:
        return self.model.steps

    def step(self, step_id: str) -> StepDef:
        for s in (*self.model.steps, *self.model.recovery_steps):
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def plc_code(self, step: StepDef) -> int:
        return self.contract.step_code(step.unit, step.plc_step)

    def order(self) -> list[str]:
        return _topo_order(self.model.steps)

    def series_s(self) -> float:
        return sum(s.duration_s for s in self.model.steps)

    def critical_path(self, speed: float = 1.0) -> tuple[float, list[str]]:
        """Earliest finish of the whole graph (the unit of each step runs one step at a time,
        which the default graph's dependencies already imply) and the path that sets it."""
        finish: dict[str, float] = {}
        via: dict[str, str | None] = {}
        for sid in self.order():
            s = self.step(sid)
            start, prev = 0.0, None
            for d in s.after:
                if finish[d] > start:
                    start, prev = finish[d], d
            finish[sid] = start + s.duration_s / speed
            via[sid] = prev
        end = max(finish, key=lambda k: finish[k])
        path: list[str] = []
        cur: str | None = end
        while cur is not None:
            path.append(cur)
            cur = via[cur]
        return finish[end], list(reversed(path))


def load_step_graph(
    path: FileRef = DEFAULT_STEPS, contract: RobotContract | None = None
) -> StepGraph:
    """Load and validate the step graph, cross-checking PLC step names against the contract."""
    contract = contract or RobotContract.load()
    model = load_model(StepGraphModel, path)
    _, index = read_yaml(path)
    problems = []
    for key, group in (("steps", model.steps), ("recovery_steps", model.recovery_steps)):
        for i, s in enumerate(group):
            if s.plc_step not in contract.steps[s.unit]:
                problems.append(
                    problem_at(
                        path,
                        index,
                        (key, i, "plc_step"),
                        f"{s.unit} unit has no PLC step {s.plc_step!r} in the robot contract",
                    )
                )
    if problems:
        raise DataFileError(problems)
    return StepGraph(model, contract)
