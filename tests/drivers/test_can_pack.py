"""Simulated pack physics: the load a charger simulator drives (voltage_v, max_current_a,
apply_current), OCV curves, CC then CV, temperature, speed."""

from __future__ import annotations

import pytest

from sim.devices.pack import BmsCore, PackModel, PackSpec, ocv


def test_ocv_curves_are_monotonic_and_in_chemistry_ranges() -> None:
    for chem, lo, hi in (("LFP", 2.8, 3.5), ("NMC", 3.0, 4.2)):
        vals = [ocv(chem, s) for s in range(0, 101, 5)]
        assert vals == sorted(vals)
        assert vals[0] == pytest.approx(lo) and vals[-1] == pytest.approx(hi)
    assert ocv("LFP", 50) == pytest.approx(3.29)
    with pytest.raises(ValueError):
        PackModel(PackSpec(chemistry="LTO"))


def test_apply_current_integrates_soc_energy_and_speed_scales_physics() -> None:
    m = PackModel(PackSpec(capacity_ah=100.0, soc_pct=20.0))
    m.apply_current(100.0, 36.0)  # 1 Ah into 100 Ah
    assert m.soc_pct == pytest.approx(21.0)
    assert m.energy_in_kwh == pytest.approx(m.voltage_v * 100 * 36 / 3.6e6, rel=0.01)
    fast = PackModel(PackSpec(capacity_ah=100.0, soc_pct=20.0), speed=10.0)
    fast.apply_current(100.0, 36.0)
    assert fast.soc_pct == pytest.approx(30.0)
    # Voltage rises with the current through the internal resistance.
    m0 = PackModel(PackSpec(soc_pct=50.0))
    v_rest = m0.voltage_v
    m0.apply_current(200.0, 0.0)
    assert m0.voltage_v == pytest.approx(v_rest + 200 * 0.0008 * 112)


def test_cc_then_cv_taper_and_full_stop() -> None:
    m = PackModel(PackSpec(chemistry="NMC", soc_pct=50.0, series_cells=96))
    assert m.max_current_a == pytest.approx(250.0) and not m.constant_voltage
    currents = []
    for _ in range(2000):
        if m.full:
            break
        i = m.max_current_a
        currents.append(i)
        m.apply_current(i, 30.0)
        assert m.max_cell_v <= 4.25
    assert m.full and currents[-1] < 50.0 < currents[0]
    assert 90.0 < m.soc_pct < 100.0  # ended in CV at C/50, as a BMS does
    assert m.max_current_a == 0.0


def test_temperature_rises_with_current_and_derates() -> None:
    m = PackModel(PackSpec(soc_pct=30.0, max_temperature_c=55))
    t0 = m.temperature_c
    for _ in range(120):
        m.apply_current(250.0, 60.0)
        if m.full:
            break
    assert m.temperature_c > t0
    hot = PackModel(PackSpec(soc_pct=30.0, temperature_c=51.0))  # probe +2 -> 53 > 55-5
    assert hot.max_current_a == pytest.approx(125.0)
    cold = PackModel(PackSpec(soc_pct=30.0, temperature_c=-2.0))
    assert cold.max_current_a == 0.0


def test_external_charger_drives_the_pack_and_bcs_reports_it() -> None:
    model = PackModel(PackSpec(soc_pct=40.0))
    core = BmsCore(model, current_from_ccs=False)
    # The charger simulator's loop: bounded by the pack's acceptance.
    delivered = min(300.0, model.max_current_a)
    model.apply_current(delivered, 1.0)
    assert core._measured_current_a() == pytest.approx(250.0)
    assert model.soc_pct > 40.0


def test_rack_cooling_runs_on_the_world_clock_while_the_charger_is_off() -> None:
    """The charger's physics step is the seated pack's clock: with the output off a hot pack
    cools toward ambient in world-minutes (not only while current flows)."""
    from sim.devices.charger import ChargerPhysics, ChargerRatings

    class Seat:  # the pack in its rack slot, as sim.world.PackSeat wires it
        def __init__(self, model: PackModel) -> None:
            self.model = model

        def pack_voltage_v(self) -> float:
            return self.model.voltage_v

        def max_current_a(self) -> float:
            return self.model.max_current_a

        def absorb(self, current_a: float, dt_s: float) -> None:
            self.model.apply_current(current_a, dt_s / self.model.speed)

    m = PackModel(PackSpec(soc_pct=95.0, temperature_c=47.0, ambient_c=25.0), speed=50.0)
    ph = ChargerPhysics(load=Seat(m), ratings=ChargerRatings(max_current_a=250, max_power_kw=60))
    assert not ph.enabled
    for _ in range(20 * 60):  # 20 world-minutes in 1 s physics steps, output off
        ph.step(1.0)
    assert ph.output_current_a == 0.0
    assert m.soc_pct == 95.0
    assert m.temperature_c < 30.0  # was 47: the swap limit (45) is met long before
    assert m.temperature_c > 25.0  # Newton cooling: approaches ambient, never below


def test_charging_heat_is_carried_away_by_the_rack() -> None:
    """At the rack charger's 60 kW (about 160 A) the pack settles well inside its limits."""
    m = PackModel(PackSpec(soc_pct=10.0, target_soc_pct=100.0))
    for _ in range(3600):
        m.apply_current(160.0, 1.0)
        m.soc_pct = 50.0  # hold the SOC: only the thermal balance is under test
    assert 25.0 < m.temperature_c < 40.0
