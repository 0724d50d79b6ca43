"""Charger simulator physics and fault switches, without sockets (pure, injected time)."""

from __future__ import annotations

import pytest

from drivers.modbus import load_register_map
from sim.devices.charger import ChargerPhysics, ChargerRatings, ChargerSim, SimpleBattery
from tests.doubles import ManualClock
from tests.drivers.modbus_fixtures import MAPS


class FixedLoad:
    def __init__(self, v: float, max_a: float) -> None:
        self.v, self.max_a, self.ah = v, max_a, 0.0

    def pack_voltage_v(self) -> float:
        return self.v

    def max_current_a(self) -> float:
        return self.max_a

    def absorb(self, current_a: float, dt_s: float) -> None:
        self.ah += current_a * dt_s / 3600


def test_constant_current_ramps_and_respects_every_limit() -> None:
    load = FixedLoad(350.0, 300.0)
    ph = ChargerPhysics(load=load, ratings=ChargerRatings(max_current_a=250, max_power_kw=60))
    ph.voltage_setpoint_v, ph.current_limit_a, ph.enabled = 420.0, 200.0, True
    ph.step(0.5)
    assert ph.output_current_a == pytest.approx(50.0)  # 100 A/s ramp
    for _ in range(30):
        ph.step(0.1)
    assert ph.output_current_a == pytest.approx(60_000 / 350, rel=1e-3)  # power limit wins
    ph.current_limit_a = 100.0
    for _ in range(20):
        ph.step(0.1)
    assert ph.output_current_a == pytest.approx(100.0)
    load.max_a = 40.0  # the pack asks for less
    for _ in range(20):
        ph.step(0.1)
    assert ph.output_current_a == pytest.approx(40.0)
    assert ph.output_voltage_v == pytest.approx(350.0 + 40.0 * ph.internal_ohm)
    assert load.ah > 0
    ph.enabled = False
    ph.step(0.1)
    assert ph.output_current_a == 0.0 and ph.output_voltage_v == 0.0 and ph.state == "standby"


def test_constant_voltage_tapers_near_the_setpoint() -> None:
    load = FixedLoad(399.0, 300.0)
    ph = ChargerPhysics(load=load)
    ph.voltage_setpoint_v, ph.current_limit_a, ph.enabled = 400.0, 200.0, True
    for _ in range(50):
        ph.step(0.1)
    assert ph.output_current_a == pytest.approx(1.0 / ph.internal_ohm)  # 20 A
    assert ph.output_voltage_v == pytest.approx(400.0)


def test_temperature_rises_with_power_then_derates_and_trips() -> None:
    ph = ChargerPhysics(load=SimpleBattery(capacity_ah=1e6), heat_c_per_kw=2.0, thermal_tau_s=10.0)
    ph.voltage_setpoint_v, ph.current_limit_a, ph.enabled = 450.0, 150.0, True
    temps = []
    for _ in range(40):
        ph.step(1.0)
        temps.append(ph.temperature_c)
    assert temps[-1] > temps[5] > 25.0
    assert ph.derated or ph.faults  # 60 kW x 2 degC/kW + 25 > 70
    for _ in range(200):
        ph.step(1.0)
    assert ph.state in ("derating", "fault")


def test_watchdog_expiry_stops_the_output_in_protocol_time() -> None:
    clock = ManualClock()
    sim = ChargerSim("c", load_register_map(MAPS["vendorb"]), clock=clock)  # timeout 3 s
    pack = FixedLoad(360.0, 120.0)
    sim.attach_load(pack)
    sim.physics.voltage_setpoint_v, sim.physics.current_limit_a, sim.physics.enabled = (
        400.0,
        50.0,
        True,
    )
    sim.step(1.0)
    assert sim.physics.output_current_a > 0 and pack.ah > 0
    clock.advance(2.9)
    sim.step(0.1)
    assert not sim.watchdog_expired
    clock.advance(0.2)
    sim.step(0.1)
    assert sim.watchdog_expired and sim.physics.output_current_a == 0.0
    assert sim.get("enable") is False
    assert "watchdog_expired" in (sim.get("fault_bits") or ())


@pytest.mark.parametrize("name", sorted(MAPS))
def test_the_register_image_follows_any_map(name: str) -> None:
    m = load_register_map(MAPS[name])
    sim = ChargerSim("c", m, clock=ManualClock())
    sim.physics.voltage_setpoint_v, sim.physics.current_limit_a, sim.physics.enabled = (
        400.0,
        50.0,
        True,
    )
    sim.step(1.0)
    assert sim.get("output_current_a") == pytest.approx(50.0)
    assert sim.get("state") == "charging"
    assert sim.get("max_power_kw") == pytest.approx(60.0)
    sim.apply_fault("invalid_values")
    assert sim.get("output_voltage_v") is None
    sim.apply_fault("bit:input_fault")
    sim.step(0.1)
    assert sim.get("state") == "fault"
    assert sim.get("fault_bits") == ("input_fault",)
    with pytest.raises(ValueError, match="unknown fault"):
        sim.apply_fault("meltdown")
