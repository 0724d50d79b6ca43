"""Map format features real chargers need (issue 13): write-only points with a read-back
address, masked fields, fault-code registers, constants, switch-off by a limit of 0, and the
check that a charger map has what the station needs to run and to switch off."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus.charger import ChargerControl
from drivers.modbus.codec import decode_words
from drivers.modbus.planner import plan_map, readback_block
from drivers.modbus.regmap import (
    PointSpec,
    RegisterMap,
    charger_problems,
    load_register_map,
    validate_map_file,
)

BASE = """name: t
device: charger
constants: {max_voltage_v: 500, max_power_kw: 22}
points:
  output_voltage_v: {table: holding, address: 0, type: u32, scale: 0.1}
  output_current_a: {table: holding, address: 2, type: u32, scale: 0.001}
  state: {table: holding, address: 4, type: u16, mask: 0xFF00, enum: {0: standby, 4: charging}}
  lock: {table: holding, address: 4, type: u16, mask: 0x00FF}
  fault_code: {table: holding, address: 5, type: u16, fault_codes: {17: over_temperature}}
  max_current_a: {table: holding, address: 6, type: u32, scale: 0.001, group: slow}
  current_limit_a:
    {table: holding, address: 256, type: u32, scale: 0.001, access: w, min: 0, max: 32,
     readback: {table: holding, address: 8}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_a_real_charger_map_validates_and_polls_no_write_only_register(tmp_path: Path) -> None:
    m = load_register_map(_write(tmp_path, BASE))
    polled = {n for blocks in plan_map(m).values() for b in blocks for n in b.names}
    assert "current_limit_a" not in polled
    assert {"state", "lock", "fault_code"} <= polled
    assert all(b.start + b.count <= 256 for bs in plan_map(m).values() for b in bs)
    rb = readback_block("current_limit_a", m.points["current_limit_a"], "big")
    assert rb is not None and (rb.table, rb.start, rb.count) == ("holding", 8, 2)
    assert charger_problems(m) == []
    c = ChargerControl.of(m)
    assert c.off_writes() == [("current_limit_a", 0.0)]  # no enable point: a limit of 0
    assert c.on_writes(400.0, 16.04) == [("current_limit_a", 16.0)]  # no voltage setpoint


def test_masked_fields_and_fault_codes_decode() -> None:
    state = PointSpec(table="holding", address=4, type="u16", mask=0x7F00, enum={4: "charging"})
    lock = PointSpec(table="holding", address=4, type="u16", mask=0x00FF)
    assert decode_words(state, "big", [0x0401]) == ("charging", True)
    assert decode_words(state, "big", [0x8401]) == ("charging", True)  # bit 15 is not ours
    assert decode_words(lock, "big", [0x0401]) == (1, True)
    code = PointSpec(table="holding", address=5, type="u32", fault_codes={17: "over_temperature"})
    assert decode_words(code, "big", [0, 0]) == ((), True)
    assert decode_words(code, "big", [0, 17]) == (("over_temperature",), True)
    # an unknown code is still a fault
    assert decode_words(code, "big", [0, 99]) == (("code_99",), True)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("mask: 0x00FF}", "mask: 0x0FFF}"), "overlaps point"),
        (("access: w, min: 0", "access: rw, min: 0"), "readback applies to write-only"),
        (
            (
                "  state: {table: holding, address: 4, type: u16, mask: 0xFF00, enum: {0: standby, 4: charging}}\n",
                "",
            ),
            "readable 'state'",
        ),
        (
            (
                "constants: {max_voltage_v: 500, max_power_kw: 22}",
                "constants: {max_voltage_v: 500}",
            ),
            "'max_power_kw'",
        ),
        (("min: 0, max: 32", "min: 6, max: 32"), "must accept 0 to switch the output off"),
        (("current_limit_a:", "other_limit_a:"), "writable 'current_limit_a'"),
        (
            (
                "lock: {table: holding, address: 4, type: u16, mask: 0x00FF}",
                "lock: {table: holding, address: 4, type: u16, mask: 0x00FF, access: rw}",
            ),
            "masked field is read-only",
        ),
        (("max_power_kw: 22}", "max_power_kw: 22, state: 1}"), "also a point"),
    ],
)
def test_check_config_refuses_what_a_real_charger_map_gets_wrong(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    assert edit[0] in BASE
    problems = validate_map_file(_write(tmp_path, BASE.replace(*edit)))
    assert any(message in p.message for p in problems), problems


def test_power_limited_charger_writes_power_at_the_measured_voltage() -> None:
    c = ChargerControl("power_limit_kw", has_enable=False, has_voltage_setpoint=False)
    assert c.on_writes(420.0, 100.0, 350.0) == [("power_limit_kw", 35.0)]
    assert c.off_writes() == [("power_limit_kw", 0.0)]
    g = ChargerControl("current_limit_a", has_enable=True, has_voltage_setpoint=True)
    assert g.off_writes() == [("enable", False), ("current_limit_a", 0.0)]
    assert g.on_writes(400.0, 50.0) == [
        ("voltage_setpoint_v", 400.0),
        ("current_limit_a", 50.0),
        ("enable", True),
    ]


def test_shipped_generic_map_is_a_usable_charger_map() -> None:

    m = load_register_map(Path(__file__).parents[2] / "drivers/modbus/maps/charger-generic.yaml")
    assert isinstance(m, RegisterMap) and charger_problems(m) == []
