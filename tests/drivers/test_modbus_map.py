"""Register maps, the point codec and the endpoint config models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from drivers.core.datafile import DataFileError, load_model
from drivers.modbus import (
    ModbusEndpoint,
    ModbusRtuEndpoint,
    ModbusTcpEndpoint,
    WriteRangeError,
    check_endpoint_against_map,
    check_endpoints,
    load_register_map,
    resolve_map_path,
    validate_map_file,
)
from drivers.modbus.codec import combine, decode_words, encode, split
from drivers.modbus.regmap import PointSpec
from tests.drivers.modbus_fixtures import MAPS

CANONICAL = {
    "output_voltage_v",
    "output_current_a",
    "state",
    "fault_bits",
    "temperature_c",
    "max_voltage_v",
    "max_current_a",
    "max_power_kw",
    "voltage_setpoint_v",
    "current_limit_a",
    "enable",
    "watchdog",
}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_shipped_charger_maps_are_valid_and_canonical(name: str) -> None:
    assert validate_map_file(MAPS[name]) == []
    m = load_register_map(MAPS[name])
    assert set(m.points) >= CANONICAL
    assert m.watchdog is not None and m.watchdog.point == "watchdog"
    states = set(m.points["state"].enum.values()) if m.points["state"].enum else set()
    assert {"off", "standby", "charging", "derating", "fault"} <= states


def test_every_charger_map_in_config_is_valid() -> None:
    files = sorted((MAPS["generic"].parent).glob("charger-*.yaml"))
    assert len(files) >= 2
    for f in files:
        assert validate_map_file(f) == [], f


BAD_MAP = """\
name: bad
poll_groups:
  fast: {period_s: 0.1}
barriers:
  - {table: holding, address: 11}
points:
  a_v: {table: input, address: 0, type: u32}
  b_v: {table: input, address: 1, type: u16}
  c_v: {table: input, address: 65535, type: f32}
  d_v: {table: input, address: 5, type: u64}
  e_v: {table: input, address: 6, type: u16, access: rw}
  f_v: {table: discrete, address: 0, type: u16}
  g_v: {table: holding, address: 10, type: i32, access: rw}
  h_v: {table: holding, address: 20, type: u16, group: medium}
  i_v: {table: holding, address: 30, type: u16, invalid: [70000]}
  j_v: {table: holding, address: 31, type: f32, enum: {0: x}}
watchdog: {point: nope}
"""


def test_map_errors_name_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD_MAP)
    problems = validate_map_file(f)
    text = [str(p) for p in problems]
    # pydantic pass first: the unknown type stops the cross-checks
    assert text == [
        f"{f}:10: points.d_v.type: Input should be 'u16', 'i16', 'u32', 'i32', 'f32', 'bool' or 'bitfield'"
    ]
    f.write_text(BAD_MAP.replace("type: u64", "type: u16"))
    with pytest.raises(DataFileError) as ei:
        load_register_map(f)
    lines = str(ei.value).splitlines()
    expected = [
        f"{f}:8: points.b_v.address: overlaps point 'a_v' (input 0..1)",
        f"{f}:9: points.c_v.address: point spans 65535..65536, beyond 65535",
        f"{f}:11: points.e_v.access: rw on read-only table 'input' (use holding or coil)",
        f"{f}:12: points.f_v.type: a discrete point holds one bit: type must be bool, not u16",
        f"{f}:13: points.g_v.address: point straddles barrier 0 at holding 11",
        f"{f}:14: points.h_v.group: unknown poll group 'medium' (known: fast)",
        f"{f}:15: points.i_v.invalid.0: invalid raw value 70000 outside the u16 range",
        f"{f}:16: points.j_v.enum: enum needs an integer type, not f32",
        f"{f}:17: watchdog.point: no point 'nope' in points",
    ]
    for e in expected:
        assert e in lines
    assert len(lines) == len(expected)


def test_unknown_key_and_bad_name(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("name: m\npoints:\n  Volts: {table: input, address: 0, type: u16, colour: red}\n")
    text = [str(p) for p in validate_map_file(f)]
    assert f"{f}:3: points.Volts.colour: unknown key" in text
    f.write_text("name: m\npoints:\n  Volts: {table: input, address: 0, type: u16}\n")
    assert [str(p) for p in validate_map_file(f)] == [
        f"{f}:3: points.Volts: point names are canonical lower_snake_case names with units (output_voltage_v)"
    ]


def _p(**kw: Any) -> PointSpec:
    base: dict[str, Any] = {"table": "holding", "address": 0, "type": "u16"}
    return PointSpec(**{**base, **kw})


def test_word_order_and_types() -> None:
    assert combine([0x1234, 0x5678], "big") == 0x12345678
    assert combine([0x5678, 0x1234], "little") == 0x12345678
    f = _p(type="f32")
    assert encode(f, "little", "x", 1.5) == [0x0000, 0x3FC0]
    assert decode_words(f, "little", [0x0000, 0x3FC0]) == (1.5, True)
    assert decode_words(f, "big", [0x7FC0, 0]) == (0x7FC00000, False)  # NaN is no value
    i = _p(type="i16", scale=0.1)
    assert encode(i, "big", "x", -12.3) == [0x10000 - 123]
    assert decode_words(i, "big", [0x10000 - 123]) == (-12.3, True)
    t = _p(type="u16", offset=-40)
    assert decode_words(t, "big", [65]) == (25, True)
    e = _p(enum={0: "off", 2: "charging"})
    assert decode_words(e, "big", [2]) == ("charging", True)
    assert decode_words(e, "big", [7]) == (7, False)
    assert encode(e, "big", "x", "charging") == [2]
    b = _p(type="bitfield", width=32, bits={0: "a", 31: "z"})
    assert decode_words(b, "big", [0x8000, 0x0001]) == (("a", "z"), True)
    assert encode(b, "big", "x", ("z",)) == [0x8000, 0]
    inv = _p(type="i16", invalid=[-32768])
    assert decode_words(inv, "big", [0x8000]) == (0x8000, False)
    with pytest.raises(WriteRangeError):
        encode(inv, "big", "x", -32768)
    with pytest.raises(WriteRangeError):
        encode(_p(type="u16", scale=0.1), "big", "x", 6553.6)
    with pytest.raises(WriteRangeError):
        encode(_p(type="u16", access="rw", min=0, max=10), "big", "x", 10.5)
    with pytest.raises(WriteRangeError):
        encode(_p(type="f32"), "big", "x", 1e39)
    with pytest.raises(WriteRangeError):
        encode(_p(type="u16"), "big", "x", math.nan)


@given(
    st.sampled_from(["u16", "i16", "u32", "i32"]),
    st.sampled_from(["big", "little"]),
    st.integers(-(2**31), 2**32 - 1),
)
def test_integer_roundtrip(kind: str, order: Any, raw: int) -> None:
    p = _p(type=kind)
    bits = p.raw_bits
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if kind[0] == "i" else (0, 2**bits - 1)
    if not lo <= raw <= hi:
        with pytest.raises(WriteRangeError):
            encode(p, order, "x", raw)
        return
    words = encode(p, order, "x", raw)
    assert isinstance(words, list) and len(words) == p.words
    assert decode_words(p, order, words) == (raw, True)
    assert split(combine(words, order), p.words, order) == words


@given(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from(["big", "little"]))
def test_float_roundtrip(x: float, order: Any) -> None:
    p = _p(type="f32")
    words = encode(p, order, "x", x)
    assert isinstance(words, list)
    value, ok = decode_words(p, order, words)
    assert ok and value == pytest.approx(x, rel=1e-6, abs=1e-6)


class Station(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chargers: list[ModbusEndpoint]


def test_endpoint_kind_is_chosen_by_keys_and_errors_read_cleanly(tmp_path: Path) -> None:
    f = tmp_path / "station.yaml"
    f.write_text(
        "chargers:\n"
        "  - {id: c1, host: 10.0.0.5, port: 502, unit_id: 1, map: registers/charger-generic.yaml}\n"
        "  - {id: c2, serial_port: /dev/ttyUSB0, baudrate: 19200, unit_id: 2, map: r.yaml}\n"
    )
    st_ = load_model(Station, f)
    assert isinstance(st_.chargers[0], ModbusTcpEndpoint)
    assert isinstance(st_.chargers[1], ModbusRtuEndpoint)
    assert (
        resolve_map_path(st_.chargers[0], tmp_path) == tmp_path / "registers/charger-generic.yaml"
    )
    assert st_.chargers[0].timeout_floor_s == 0.2 and st_.chargers[1].parity == "E"
    f.write_text(
        "chargers:\n"
        "  - {id: c1, host: h, port: 99999, map: m.yaml}\n"
        "  - {id: c2, serial_port: /dev/ttyUSB0, host: h, map: m.yaml}\n"
        "  - {id: c3, host: h, map: m.yaml, timeout_floor_s: 2, timeout_max_s: 1}\n"
    )
    with pytest.raises(DataFileError) as ei:
        load_model(Station, f)
    lines = str(ei.value).splitlines()
    assert lines[0].startswith(
        f"{f}:2: chargers.0.port: Input should be less than or equal to 65535"
    )
    assert lines[1] == f"{f}:3: chargers.1.host: unknown key"
    assert lines[2].startswith(
        f"{f}:4: chargers.2: Value error, timeout_max_s must be >= timeout_floor_s"
    )


def test_check_endpoints_finds_clashes() -> None:
    eps: list[ModbusTcpEndpoint | ModbusRtuEndpoint] = [
        ModbusTcpEndpoint(id="a", host="h", unit_id=1, map="m"),
        ModbusTcpEndpoint(id="a", host="h", unit_id=1, map="m"),
        ModbusRtuEndpoint(id="b", serial_port="/dev/x", unit_id=1, map="m"),
        ModbusRtuEndpoint(id="c", serial_port="/dev/x", unit_id=2, baudrate=9600, map="m"),
    ]
    assert check_endpoints(eps) == [
        (1, "id", "duplicate id 'a' (also item 0)"),
        (1, "unit_id", "unit 1 on tcp://h:502 also used by item 0"),
        (3, "baudrate", "line settings differ from item 2 on the same port"),
    ]


def test_endpoint_settings_checked_against_the_map() -> None:
    m = load_register_map(MAPS["generic"])
    ok = ModbusTcpEndpoint(id="a", host="h", map="m", poll_periods_s={"fast": 0.2})
    assert check_endpoint_against_map(ok, m) == []
    bad = ModbusTcpEndpoint(
        id="a", host="h", map="m", poll_periods_s={"fats": 0.2}, watchdog_period_s=6
    )
    assert check_endpoint_against_map(bad, m) == [
        (
            "poll_periods_s.fats",
            "map 'charger-generic' has no poll group 'fats' (known: control, fast, slow)",
        ),
        ("watchdog_period_s", "6.0 s does not feed a 5.0 s device watchdog"),
    ]
