"""The simulators' own fault switches as `FaultInjectable`s, for the fault listener.

Each simulator already has a fault API of its own shape (branches modbus, can, swap); these
adapters give them the one shape the listener dispatches to, without touching the simulators.
They are typed against small Protocols of the methods they call, so this module imports no
simulator and a factory wraps what it starts:

    {"ch01": ChargerFaults(charger_sim, FAULT_NAMES, bit_flags=...),
     "pack-s01": PackFaults(sim_pack, Fault),
     "robot": RobotFaults(robot_plc_sim)}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Protocol


class _AppliesFaults(Protocol):
    def apply_fault(
        self, name: str, active: bool = True, value: float | int | None = None
    ) -> None: ...


class ChargerFaults:
    """sim.devices.charger.ChargerSim: `apply_fault(name, active, value)`. `names` is the
    simulator's FAULT_NAMES; `bit_flags` the map's fault-bit names, offered as `bit:<flag>`.
    The optional `value` param carries slow's delay or exception's code."""

    def __init__(
        self, sim: _AppliesFaults, names: Iterable[str], bit_flags: Iterable[str] = ()
    ) -> None:
        self.sim = sim
        self._names = [*names, *(f"bit:{b}" for b in bit_flags)]

    def faults(self) -> list[str]:
        return list(self._names)

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        value = params.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{fault}: value must be a number, got {value!r}")
        self.sim.apply_fault(fault, True, value)

    def clear(self, fault: str) -> None:
        self.sim.apply_fault(fault, False)


class _InjectsEnum(Protocol):
    def inject(self, fault: Any) -> None: ...

    def clear(self, fault: Any) -> None: ...


class PackFaults:
    """sim.devices.pack.SimPack (or BmsCore): `inject(Fault)` / `clear(Fault)` with the
    simulator's `Fault` StrEnum; the wire name is the enum value."""

    def __init__(self, pack: _InjectsEnum, fault_enum: type[Enum]) -> None:
        self.pack = pack
        self.fault_enum = fault_enum

    def faults(self) -> list[str]:
        return [str(f.value) for f in self.fault_enum]

    def _member(self, fault: str) -> Enum:
        return self.fault_enum(fault)  # ValueError for a name the enum does not have

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        self.pack.inject(self._member(fault))

    def clear(self, fault: str) -> None:
        self.pack.clear(self._member(fault))


class _RobotPlc(Protocol):
    def set_input(self, name: str, value: bool) -> None: ...

    def emergency_stop(self, pressed: bool = True) -> None: ...

    def break_curtain(self, broken: bool = True) -> None: ...

    def inject_step_fault(self, unit: str, step: str) -> None: ...

    def inject_stuck(self, unit: str, step: str) -> None: ...

    def inject_torque_failure(self, heads: int) -> None: ...

    def freeze(self, frozen: bool = True) -> None: ...


def _text(params: Mapping[str, Any], key: str) -> str:
    v = params.get(key)
    if not isinstance(v, str) or not v:
        raise ValueError(f"param {key!r} (a name) is required")
    return v


class RobotFaults:
    """sim.devices.robot_plc.RobotPlcSim (and the vehicle on its platform). Latching faults
    (e-stop, curtain, door, vehicle not ready) clear by restoring the input; one-shot faults
    (step_fault, stuck_step, torque_failure) are consumed by the next run, clear undoes the
    torque one and is a no-op for the others (the step already ran or will run faulty once)."""

    FAULTS = (
        "emergency_stop",
        "light_curtain",
        "door_open",
        "step_fault",
        "stuck_step",
        "torque_failure",
        "vehicle_not_ready",
        "frozen_heartbeat",
    )

    def __init__(self, plc: _RobotPlc) -> None:
        self.plc = plc

    def faults(self) -> list[str]:
        return list(self.FAULTS)

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        self._switch(fault, True, params)

    def clear(self, fault: str) -> None:
        self._switch(fault, False, {})

    def _switch(self, fault: str, on: bool, params: Mapping[str, Any]) -> None:
        p = self.plc
        if fault == "emergency_stop":
            p.emergency_stop(on)
        elif fault == "light_curtain":
            p.break_curtain(on)
        elif fault == "door_open":
            p.set_input("doors_closed", not on)
        elif fault == "frozen_heartbeat":
            p.freeze(on)
        elif fault == "vehicle_not_ready":
            p.set_input("vehicle_hv_off", not on)
            p.set_input("vehicle_immobilised", not on)
        elif fault == "torque_failure":
            heads = params.get("heads", 1) if on else 0
            if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
                raise ValueError(f"torque_failure: heads must be a count >= 0, got {heads!r}")
            p.inject_torque_failure(heads)
        elif fault in ("step_fault", "stuck_step"):
            if on:
                unit, step = _text(params, "unit"), _text(params, "step")
                if unit not in ("vehicle", "rack"):
                    raise ValueError(f"{fault}: unit must be vehicle or rack, got {unit!r}")
                (p.inject_step_fault if fault == "step_fault" else p.inject_stuck)(unit, step)
        else:
            raise ValueError(f"unknown robot fault {fault!r}")
