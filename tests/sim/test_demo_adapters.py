"""The adapters give each simulator's own fault API the FaultInjectable shape. The stand-ins
below have the same method signatures as the simulators on branches modbus, can and swap."""

from __future__ import annotations

from enum import StrEnum

import orjson
import pytest

from sim.adapters import ChargerFaults, PackFaults, RobotFaults
from sim.faults import FaultDispatcher, FaultInjectable, FaultOutcome

ROOT = "swapstation/v1/demo-01"


class Charger:
    """sim.devices.charger.ChargerSim.apply_fault's contract: unknown names raise ValueError."""

    NAMES = ("silent", "slow", "exception")

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, float | int | None]] = []

    def apply_fault(self, name: str, active: bool = True, value: float | int | None = None) -> None:
        if name not in self.NAMES and not name.startswith("bit:"):
            raise ValueError(f"unknown fault {name!r}")
        self.calls.append((name, active, value))


class Fault(StrEnum):
    SILENT = "silent"
    BCL_STOPS = "bcl_stops"


class Pack:
    def __init__(self) -> None:
        self.faults: set[Fault] = set()

    def inject(self, fault: Fault) -> None:
        self.faults.add(fault)

    def clear(self, fault: Fault) -> None:
        self.faults.discard(fault)


class Plc:
    def __init__(self) -> None:
        self.inputs = {
            "estop_chain_healthy": True,
            "doors_closed": True,
            "light_curtain_clear": True,
            "vehicle_hv_off": True,
            "vehicle_immobilised": True,
        }
        self.step_faults: set[tuple[str, str]] = set()
        self.stuck: set[tuple[str, str]] = set()
        self.torque_heads = 0

    def set_input(self, name: str, value: bool) -> None:
        if name not in self.inputs:
            raise KeyError(name)
        self.inputs[name] = value

    def emergency_stop(self, pressed: bool = True) -> None:
        self.set_input("estop_chain_healthy", not pressed)

    def break_curtain(self, broken: bool = True) -> None:
        self.set_input("light_curtain_clear", not broken)

    def inject_step_fault(self, unit: str, step: str) -> None:
        self.step_faults.add((unit, step))

    def inject_stuck(self, unit: str, step: str) -> None:
        self.stuck.add((unit, step))

    def inject_torque_failure(self, heads: int) -> None:
        self.torque_heads = heads


def send(
    d: FaultDispatcher, device: str, fault: str, clear: bool = False, **params: object
) -> FaultOutcome:
    payload = orjson.dumps({"fault": fault, "clear": clear, "params": params})
    return d.handle(f"{ROOT}/sim/{device}/fault", payload)


@pytest.fixture
def devices() -> tuple[Charger, Pack, Plc, FaultDispatcher]:
    charger, pack, plc = Charger(), Pack(), Plc()
    registry: dict[str, FaultInjectable] = {
        "ch01": ChargerFaults(charger, Charger.NAMES, bit_flags=["over_voltage"]),
        "pack-s01": PackFaults(pack, Fault),
        "robot": RobotFaults(plc),
    }
    for dev in registry.values():
        assert isinstance(dev, FaultInjectable)
    return charger, pack, plc, FaultDispatcher(ROOT, registry)


def test_charger_faults_and_values(devices: tuple[Charger, Pack, Plc, FaultDispatcher]) -> None:
    charger, _, _, d = devices
    assert send(d, "ch01", "slow", value=1.5) is FaultOutcome.INJECTED
    assert send(d, "ch01", "bit:over_voltage") is FaultOutcome.INJECTED
    assert send(d, "ch01", "slow", clear=True) is FaultOutcome.CLEARED
    assert send(d, "ch01", "slow", value="fast") is FaultOutcome.REJECTED
    assert send(d, "ch01", "bit:unlisted") is FaultOutcome.UNKNOWN_FAULT
    assert charger.calls == [
        ("slow", True, 1.5),
        ("bit:over_voltage", True, None),
        ("slow", False, None),
    ]


def test_pack_faults_by_enum_value(devices: tuple[Charger, Pack, Plc, FaultDispatcher]) -> None:
    _, pack, _, d = devices
    assert send(d, "pack-s01", "bcl_stops") is FaultOutcome.INJECTED
    assert pack.faults == {Fault.BCL_STOPS}
    assert send(d, "pack-s01", "bcl_stops", clear=True) is FaultOutcome.CLEARED
    assert pack.faults == set()
    assert send(d, "pack-s01", "BCL_STOPS") is FaultOutcome.UNKNOWN_FAULT


def test_robot_latching_faults_restore_inputs(
    devices: tuple[Charger, Pack, Plc, FaultDispatcher],
) -> None:
    _, _, plc, d = devices
    healthy = dict(plc.inputs)
    for fault in ("emergency_stop", "light_curtain", "door_open", "vehicle_not_ready"):
        assert send(d, "robot", fault) is FaultOutcome.INJECTED
    assert not any(plc.inputs.values())
    for fault in ("emergency_stop", "light_curtain", "door_open", "vehicle_not_ready"):
        assert send(d, "robot", fault, clear=True) is FaultOutcome.CLEARED
    assert plc.inputs == healthy


def test_robot_one_shot_faults_need_their_params(
    devices: tuple[Charger, Pack, Plc, FaultDispatcher],
) -> None:
    _, _, plc, d = devices
    assert send(d, "robot", "step_fault", unit="vehicle", step="lock") is FaultOutcome.INJECTED
    assert send(d, "robot", "stuck_step", unit="rack", step="fetch") is FaultOutcome.INJECTED
    assert send(d, "robot", "torque_failure", heads=2) is FaultOutcome.INJECTED
    assert (plc.step_faults, plc.stuck, plc.torque_heads) == (
        {("vehicle", "lock")},
        {("rack", "fetch")},
        2,
    )
    assert send(d, "robot", "torque_failure", clear=True) is FaultOutcome.CLEARED
    assert plc.torque_heads == 0
    for params in ({}, {"unit": "arm", "step": "lock"}, {"unit": "rack", "step": 3}):
        assert send(d, "robot", "step_fault", **params) is FaultOutcome.REJECTED
    assert send(d, "robot", "torque_failure", heads=-1) is FaultOutcome.REJECTED
    assert send(d, "robot", "torque_failure", heads=True) is FaultOutcome.REJECTED
