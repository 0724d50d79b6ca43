"""The injectors give the simulators' own fault switches the FaultInjectable shape the listener
dispatches to; here against the real charger and robot PLC simulators (a world's pack seat is
one itself: tests/sim/test_world.py)."""

from __future__ import annotations

import orjson
import pytest

from drivers.modbus import load_register_map
from sim.devices.charger import FAULT_NAMES, ChargerSim
from sim.devices.robot_plc import RobotPlcSim
from sim.faults import (
    ChargerInjector,
    FaultDispatcher,
    FaultInjectable,
    FaultOutcome,
    RobotInjector,
    fault_catalogue,
)
from tests.drivers.modbus_fixtures import MAPS

ROOT = "swapstation/v1/demo-01"


def send(
    d: FaultDispatcher, device: str, fault: str, clear: bool = False, **params: object
) -> FaultOutcome:
    payload = orjson.dumps({"fault": fault, "clear": clear, "params": params})
    return d.handle(f"{ROOT}/sim/{device}/fault", payload)


@pytest.fixture
def devices() -> tuple[ChargerSim, RobotPlcSim, FaultDispatcher]:
    charger = ChargerSim("ch01", load_register_map(MAPS["generic"]))
    plc = RobotPlcSim()
    registry: dict[str, FaultInjectable] = {
        "ch01": ChargerInjector(charger, bit_flags=["over_voltage"]),
        "robot": RobotInjector(plc),
    }
    for dev in registry.values():
        assert isinstance(dev, FaultInjectable)
    return charger, plc, FaultDispatcher(ROOT, registry)


def test_charger_faults_and_values(
    devices: tuple[ChargerSim, RobotPlcSim, FaultDispatcher],
) -> None:
    charger, _, d = devices
    assert send(d, "ch01", "slow", value=1.5) is FaultOutcome.INJECTED
    assert charger.faults.slow_s == 1.5
    assert send(d, "ch01", "bit:over_voltage") is FaultOutcome.INJECTED
    assert charger.faults.fault_bits == {"over_voltage"}
    assert send(d, "ch01", "slow", clear=True) is FaultOutcome.CLEARED
    assert charger.faults.slow_s == 0.0
    assert send(d, "ch01", "slow", value="fast") is FaultOutcome.REJECTED
    assert send(d, "ch01", "bit:unlisted") is FaultOutcome.UNKNOWN_FAULT
    assert send(d, "ch01", "melt") is FaultOutcome.UNKNOWN_FAULT


def test_robot_latching_faults_restore_inputs(
    devices: tuple[ChargerSim, RobotPlcSim, FaultDispatcher],
) -> None:
    _, plc, d = devices
    latching = ("emergency_stop", "light_curtain", "door_open", "vehicle_not_ready")
    for fault in latching:
        assert send(d, "robot", fault) is FaultOutcome.INJECTED
    names = ("estop_chain_healthy", "light_curtain_clear", "doors_closed")
    assert not any(plc.inputs[n] for n in (*names, "vehicle_hv_off", "vehicle_immobilised"))
    for fault in latching:
        assert send(d, "robot", fault, clear=True) is FaultOutcome.CLEARED
    assert all(plc.inputs[n] for n in (*names, "vehicle_hv_off", "vehicle_immobilised"))


def test_robot_one_shot_faults_need_their_params(
    devices: tuple[ChargerSim, RobotPlcSim, FaultDispatcher],
) -> None:
    _, plc, d = devices
    assert send(d, "robot", "step_fault", unit="vehicle", step="lock") is FaultOutcome.INJECTED
    assert send(d, "robot", "stuck_step", unit="rack", step="fetch") is FaultOutcome.INJECTED
    assert send(d, "robot", "torque_failure", heads=2) is FaultOutcome.INJECTED
    f = plc.faults
    assert (f.step_fault, f.stuck, f.torque_heads) == (
        {("vehicle", "lock")},
        {("rack", "fetch")},
        2,
    )
    assert send(d, "robot", "torque_failure", clear=True) is FaultOutcome.CLEARED
    assert plc.faults.torque_heads == 0
    for params in ({}, {"unit": "arm", "step": "lock"}, {"unit": "rack", "step": 3}):
        assert send(d, "robot", "step_fault", **params) is FaultOutcome.REJECTED
    assert send(d, "robot", "torque_failure", heads=-1) is FaultOutcome.REJECTED
    assert send(d, "robot", "torque_failure", heads=True) is FaultOutcome.REJECTED
    assert send(d, "robot", "frozen_heartbeat") is FaultOutcome.INJECTED
    assert plc.frozen_status is not None


def test_every_simulated_fault_is_described() -> None:
    """The catalogue's names come from the simulators: one they add must get its words here."""
    for d in fault_catalogue():
        missing = [f.name for f in d.faults if not f.description]
        assert missing == [], f"{d.device_type} faults with no description: {missing}"
    charger = next(d for d in fault_catalogue() if d.device_type == "charger")
    assert [f.name for f in charger.faults] == [*FAULT_NAMES, "bit:<flag>"]
