"""Vendor maps against emulators written from the same published register tables.

For each vendor: at least 10 transcribed rows (raw registers -> value) checked against both our
map (decoded by drivers.modbus) and the emulator's own register image, then the composed
daemon charges through the emulator and switches it off, judged by the emulator's registers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.codec import Value, decode_words, encode
from drivers.modbus.regmap import RegisterMap, load_register_map
from edge.config import load_config
from edge.slot.core import SlotState
from tests.conformance.gbt_bms import BmsPeerConfig
from tests.conformance.rig import conformance_station
from tests.conformance.vendors.abb_terra_ac import AbbTerraAc
from tests.conformance.vendors.alpitronic_hyc import AlpitronicHyc
from tests.conformance.vendors.base import VendorEmulator, serving
from tests.conformance.vendors.heidelberg_ec import HeidelbergEc
from tests.edge.station_fixtures import mini_config, running_station, wait_for

MAPS = Path(__file__).resolve().parents[2] / "drivers" / "modbus" / "maps"


@dataclass(frozen=True)
class Row:
    """One row of the vendor's table in a known situation: `table`/`address` hold `raw`, which
    our map's point `name` reads as `value`."""

    table: str
    address: int
    raw: tuple[int, ...]
    name: str
    value: Value


@dataclass(frozen=True)
class Vendor:
    map_name: str
    make: Callable[[], VendorEmulator]
    # (a situation the emulator is put in, the rows of the table in that situation)
    cases: tuple[tuple[Callable[[Any], None], tuple[Row, ...]], ...]
    charging: Callable[[Any], bool]  # judged by the emulator's own registers
    off: Callable[[Any], bool]


def _abb_situation(e: AbbTerraAc) -> None:
    e.written("holding", 0x4100, [0, 16_000])  # 16 A
    e.step(1.0)


def _abb_error(e: AbbTerraAc) -> None:
    e.written("holding", 0x4100, [0, 16_000])
    e.error_code = 17  # a fault the table's code list would name
    e.step(1.0)


ABB = Vendor(
    "charger-abb-terra-ac",
    AbbTerraAc,
    (
        (
            _abb_situation,
            (
                Row("holding", 0x4006, (0, 32_000), "max_current_a", 32.0),
                Row("holding", 0x4008, (0, 0), "fault_code", ()),
                Row("holding", 0x400D, (0x0400,), "state", "charging"),
                Row("holding", 0x400E, (0, 16_000), "current_limit_a", 16.0),  # the read-back
                Row("holding", 0x4010, (0, 16_000), "output_current_a", 16.0),
                Row("holding", 0x4016, (0, 2300), "output_voltage_v", 230.0),
                Row("holding", 0x401C, (0, 11_040), "output_power_kw", 11.04),
                Row("holding", 0x4012, (0, 16_000), "output_current_a", 16.0),  # L2 = L1
                Row("holding", 0x4018, (0, 2300), "output_voltage_v", 230.0),  # L2 = L1
                Row("holding", 0x4014, (0, 16_000), "output_current_a", 16.0),  # L3 = L1
                Row("holding", 0x400C, (0,), "state", None),  # the state's unused first register
                Row("holding", 0x400A, (0, 0x0101), "", None),  # socket lock: not mapped
            ),
        ),
        (
            _abb_error,
            (
                Row("holding", 0x4008, (0, 17), "fault_code", ("code_17",)),
                Row("holding", 0x400D, (0x0200,), "state", "standby"),
                Row("holding", 0x4010, (0, 0), "output_current_a", 0.0),
            ),
        ),
    ),
    lambda e: e.state == 4 and e.current_a > 5.9,
    lambda e: e.limit_ma == 0 and e.state == 2 and e.current_a == 0.0,
)


def _heidelberg_16a(e: HeidelbergEc) -> None:
    e.written("holding", 261, [160])
    e.step(1.0)


HEIDELBERG = Vendor(
    "charger-heidelberg-ec",
    HeidelbergEc,
    (
        (
            _heidelberg_16a,
            (
                Row("input", 5, (7,), "state", "charging"),
                Row("input", 6, (160,), "output_current_a", 16.0),
                Row("input", 7, (160,), "output_current_a", 16.0),  # L2 = L1
                Row("input", 8, (160,), "output_current_a", 16.0),  # L3 = L1
                Row("input", 9, (253,), "temperature_c", 25.3),
                Row("input", 10, (230,), "output_voltage_v", 230),
                Row("input", 11, (230,), "output_voltage_v", 230),
                Row("input", 14, (11_040,), "output_power_kw", 11.04),
                Row("holding", 261, (160,), "current_limit_a", 16.0),
                Row("input", 4, (0x0108,), "", None),  # layout version: not mapped
            ),
        ),
        (
            lambda e: (e.written("holding", 261, [0]), e.step(1.0)),
            (
                Row("input", 5, (5,), "state", "standby"),
                Row("holding", 261, (0,), "current_limit_a", 0.0),
                Row("input", 6, (0,), "output_current_a", 0.0),
            ),
        ),
    ),
    lambda e: e.state == 7 and e.limit_da >= 60,
    lambda e: e.limit_da == 0 and e.state == 5,
)


def _hyc_35kw(e: AlpitronicHyc) -> None:
    e.written("holding", 0, [0, 35_000])
    e.step(0.0)


ALPITRONIC = Vendor(
    "charger-alpitronic-hyc",
    AlpitronicHyc,
    (
        (
            _hyc_35kw,
            (
                Row("input", 100, (3,), "state", "charging"),
                Row("input", 101, (0, 35_000), "output_voltage_v", 350.0),
                Row("input", 103, (10_000,), "output_current_a", 100.0),
                Row("input", 104, (0, 35_000), "output_power_kw", 35.0),
                Row("holding", 0, (0, 35_000), "power_limit_kw", 35.0),
                Row("input", 110, (2, 0x49F0), "", None),  # EV max power 150 kW: not mapped
            ),
        ),
        (
            lambda e: (e.written("holding", 0, [0, 0]), e.step(0.0)),
            (
                Row("input", 100, (5,), "state", "standby"),  # suspended by the EVSE
                Row("input", 103, (0,), "output_current_a", 0.0),
                Row("input", 104, (0, 0), "output_power_kw", 0.0),
                Row("holding", 0, (0, 0), "power_limit_kw", 0.0),
                Row("input", 101, (0, 35_000), "output_voltage_v", 350.0),
            ),
        ),
    ),
    lambda e: e.state == 3 and e.current_a > 5.0,
    lambda e: e.power_limit_w == 0 and e.state == 5 and e.current_a == 0.0,
)

VENDORS = {"abb-terra-ac": ABB, "heidelberg-ec": HEIDELBERG, "alpitronic-hyc": ALPITRONIC}


@pytest.mark.parametrize("vendor", VENDORS.values(), ids=VENDORS.keys())
def test_transcribed_rows_agree_in_map_and_emulator(vendor: Vendor) -> None:
    m = load_register_map(MAPS / f"{vendor.map_name}.yaml")
    assert sum(r.value is not None for _s, rows in vendor.cases for r in rows) >= 10
    for situation, rows in vendor.cases:
        emu = vendor.make()
        situation(emu)
        _check_rows(m, emu, rows)


def _check_rows(m: RegisterMap, emu: VendorEmulator, rows: tuple[Row, ...]) -> None:
    for row in rows:
        image = tuple(emu.regs[row.table].get(row.address + i, 0) for i in range(len(row.raw)))
        assert image == row.raw, f"emulator {row.table} {row.address:#x}: {image} != {row.raw}"
        if row.value is None:
            continue
        spec = m.points[row.name]
        assert (spec.readback.table if spec.readback else spec.table) == row.table
        value, ok = decode_words(spec, m.word_order_of(spec), list(row.raw))
        assert ok and value == pytest.approx(row.value), (row, value)


def test_map_writes_are_what_the_emulator_accepts() -> None:
    m = load_register_map(MAPS / "charger-abb-terra-ac.yaml")
    e = AbbTerraAc()
    spec = m.points["current_limit_a"]
    words = encode(spec, "big", "current_limit_a", 10.5)
    assert isinstance(words, list)
    assert e.written(spec.table, spec.address, words) and e.limit_ma == 10_500


@pytest.mark.timeout(90)
@pytest.mark.parametrize("vendor", VENDORS.values(), ids=VENDORS.keys())
async def test_composed_daemon_charges_through_and_switches_off(
    tmp_path: Path, vendor: Vendor
) -> None:
    path = mini_config(tmp_path, 1)
    path.write_text(
        path.read_text().replace("builtin:charger-generic", f"builtin:{vendor.map_name}")
    )
    port = load_config(path).chargers[0].port  # type: ignore[union-attr]
    emu = vendor.make()
    async with serving(emu, port), running_station(path, charger_sims=False) as w:
        slot = w.station.slots["s01"]
        await wait_for(lambda: slot.core.state is SlotState.CHARGING, 30)
        await wait_for(lambda: vendor.charging(emu), 15)
        # Polls never read a write-only register.
        assert emu.refused == 0, emu.requests
        # Output off while the pack stays (the swap's output_off) ...
        await slot.output_off(timeout_s=5.0)
        await wait_for(lambda: vendor.off(emu), 2)
    # ... and the daemon's stop left it off.
    assert vendor.off(emu), vars(emu)
    assert emu.refused == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("vendor", VENDORS.values(), ids=VENDORS.keys())
async def test_swapd_run_charges_through_and_sigterm_switches_off(
    tmp_path: Path, vendor: Vendor
) -> None:
    """The same emulators against `swapd run` in a child process, the GB/T BMS peer over
    SLCAN/TCP: it charges, never reads a write-only register, and SIGTERM leaves it off."""
    emu = vendor.make()
    bms = BmsPeerConfig(soc_pct=40.0, target_soc_pct=95.0, capacity_ah=50.0, demand_a=30.0)
    async with (
        asyncio.timeout(60),
        conformance_station(
            tmp_path,
            1,
            {1: bms},
            daemon="process",
            charger_peers={"ch01": emu},
            charger_map=f"builtin:{vendor.map_name}",
        ) as rig,
    ):
        await wait_for(lambda: vendor.charging(emu), 30)
        assert emu.refused == 0, emu.requests
        pack = rig.seats[0].peer
        assert pack is not None
    assert [str(v) for v in pack.violations] == []
    assert rig.daemon is not None and rig.daemon.returncode == 0, rig.daemon.tail()
    assert vendor.off(emu), vars(emu)
    assert emu.refused == 0


def test_check_config_refuses_the_map_a_new_user_first_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: a vendor map written as a new user would before the format had write-only
    points and limit-0 switch-off: setpoint `rw`, no enable, a limit that must stay >= 6 A and
    no voltage or power rating. check-config now says what is missing instead of accepting it."""
    from edge.cli.check_config import check_config

    text = (MAPS / "charger-abb-terra-ac.yaml").read_text()
    text = text.replace("    access: w\n    readback: {table: holding, address: 0x400E}\n", "")
    text = text.replace("    min: 0\n", "    min: 6\n")
    start, end = text.index("constants:"), text.index("points:")
    text = text[:start] + text[end:]  # no ratings but the published max current
    bad = tmp_path / "cfg" / "abb-first-try.yaml"
    path = mini_config(tmp_path, 1)
    bad.write_text(text)
    path.write_text(path.read_text().replace("builtin:charger-generic", "abb-first-try.yaml"))
    assert check_config(str(path)) == 2
    err = capsys.readouterr().err
    assert "must accept 0 to switch the output off" in err
    assert "'max_voltage_v'" in err and "'max_power_kw'" in err


async def test_device_owner_on_a_write_only_block(tmp_path: Path) -> None:
    """Against the ABB emulator: the poll never reads the write-only block, a write is
    confirmed at its read-back address, constants are good values, and a write-only point
    without a read-back is confirmed by the device's acknowledgement alone."""
    import asyncio
    import contextlib

    from drivers.core.clock import SystemClock
    from drivers.modbus import ModbusDevice, ModbusLink
    from sim.ports import LoopbackPorts
    from tests.doubles import RecordingAlarmSink

    ports = LoopbackPorts()
    port = ports.take()
    ports.close()
    text = (MAPS / "charger-abb-terra-ac.yaml").read_text()
    for with_readback in (True, False):
        if not with_readback:
            text = text.replace("    readback: {table: holding, address: 0x400E}\n", "")
        path = tmp_path / f"abb-{with_readback}.yaml"
        path.write_text(text)
        m = load_register_map(path)
        emu = AbbTerraAc()
        async with serving(emu, port):
            link = ModbusLink.tcp("127.0.0.1", port, connect_timeout_s=1.0)
            sink = RecordingAlarmSink()
            dev = ModbusDevice("abb", m, link, unit_id=1, clock=SystemClock(), alarms=sink)
            tasks = [asyncio.create_task(link.run()), asyncio.create_task(dev.run())]
            try:
                async with asyncio.timeout(10):
                    while not dev.online.is_set():
                        await dev.next_update()
                    await dev.write("current_limit_a", 12.5)
                    assert emu.limit_ma == 12_500
                    snap = await dev.next_update()
                    assert snap.good("max_power_kw") == 22.0  # a constant
                    assert snap.good("max_current_a") == 32.0  # published
                    await dev.write("current_limit_a", 0.0)
                    assert emu.limit_ma == 0
                assert emu.refused == 0 and dev.counters.write_verify_failures == 0
                assert not [k for k in emu.requests if k[0] in (3, 4) and k[1] >= 0x4100]
            finally:
                for t in tasks:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
