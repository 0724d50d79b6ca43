import json
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.core.datafile import DataFileError
from drivers.modbus.config import SHIPPED_MAPS
from drivers.modbus.config import ModbusRtuEndpoint as ModbusRtu
from drivers.modbus.config import ModbusTcpEndpoint as ModbusTcp
from edge.config import load_config
from tests.edge.foundation_helpers import station_copy


def swapd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_example_station_is_valid(tmp_path: Path) -> None:
    cfg = load_config(station_copy(tmp_path))
    assert cfg.station.id == "demo-01"
    assert len(cfg.slots) == 12 and len(cfg.chargers) == 12
    assert all(isinstance(c, ModbusTcp) for c in cfg.chargers)
    assert len({s.bus.channel for s in cfg.slots}) == 12


def test_check_config_ok_exit_0_result_on_stdout(tmp_path: Path) -> None:
    r = swapd("check-config", str(station_copy(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert '"ok": true' in r.stdout.strip().splitlines()[-1]


def test_three_problems_three_lines(tmp_path: Path) -> None:
    path = station_copy(
        tmp_path,
        {
            "port: 15021": 'port: "abc"',
            "  name: Demo": "  nmae: Demo",
            "charger: ch05": "charger: ch99",
        },
    )
    r = swapd("check-config", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, r.stderr
    text = path.read_text().splitlines()
    by_field = {ln.split(": ")[1]: ln for ln in lines}
    for field, needle in (
        ("station.nmae", "nmae:"),
        ("chargers.0.port", 'port: "abc"'),
        ("slots.4.charger", "ch99"),
    ):
        ln = by_field[field]
        file, line_no = ln.split(":")[0], int(ln.split(":")[1])
        assert file == str(path)
        assert needle in text[line_no - 1]
    assert "unknown key" in by_field["station.nmae"]
    assert "no charger with id 'ch99'" in by_field["slots.4.charger"]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("station: [\n", "invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("", "the config must be a mapping"),
    ],
)
def test_bad_files_clear_line(tmp_path: Path, content: str, expect: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(content)
    r = swapd("check-config", str(f))
    assert r.returncode == 2
    assert expect in r.stderr and "Traceback" not in r.stderr


def test_missing_file_exit_2(tmp_path: Path) -> None:
    r = swapd("check-config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "file not found" in r.stderr


def test_duplicate_ids_and_shared_bus(tmp_path: Path) -> None:
    path = station_copy(
        tmp_path, {"id: ch02,": "id: ch01,", "socket://127.0.0.1:16002": "socket://127.0.0.1:16001"}
    )
    with pytest.raises(DataFileError) as ei:
        load_config(path)
    msgs = [f"{p.field}: {p.message}" for p in ei.value.problems]
    assert any(m.startswith("chargers.1.id: duplicate id 'ch01'") for m in msgs)
    assert any(m.startswith("slots.1.bus.channel: bus already used by slots.0") for m in msgs)


def test_rtu_charger_and_port_range(tmp_path: Path) -> None:
    path = station_copy(
        tmp_path,
        {
            "{id: ch01, host: 127.0.0.1, port: 15021, unit_id: 1,": "{id: ch01, serial_port: /dev/ttyS1, baudrate: 19200, unit_id: 3,",
            "port: 15022": "port: 70000",
        },
    )
    with pytest.raises(DataFileError) as ei:
        load_config(path)
    text = path.read_text().splitlines()
    [(field, line)] = [(p.field, p.line) for p in ei.value.problems]
    assert field == "chargers.1.port" and "port: 70000" in text[line - 1]


def test_rtu_parses(tmp_path: Path) -> None:
    path = station_copy(
        tmp_path,
        {
            "{id: ch01, host: 127.0.0.1, port: 15021, unit_id: 1,": "{id: ch01, serial_port: /dev/ttyS1, baudrate: 19200, unit_id: 3,"
        },
    )
    cfg = load_config(path)
    assert isinstance(cfg.chargers[0], ModbusRtu) and cfg.chargers[0].unit_id == 3


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = station_copy(tmp_path)
    monkeypatch.setenv("SWAPD_MQTT_PASSWORD", "s3cret")
    assert load_config(path).mqtt.password == "s3cret"
    monkeypatch.delenv("SWAPD_MQTT_PASSWORD")
    (path.parent / "pw").write_text("from-file\n")
    path.write_text(
        path.read_text().replace('  protocol: "5"', '  protocol: "5"\n  password_file: pw')
    )
    assert load_config(path).mqtt.password == "from-file"


def test_check_config_reports_problems_inside_a_register_map(tmp_path: Path) -> None:
    # A station's own map, named relative to the config file, beside the shipped ones.
    path = station_copy(
        tmp_path,
        {
            "port: 15021, unit_id: 1, map: builtin:charger-generic": (
                "port: 15021, unit_id: 1, map: registers/charger-own.yaml"
            )
        },
    )
    m = path.parent / "registers" / "charger-own.yaml"
    m.parent.mkdir()
    m.write_text(
        (SHIPPED_MAPS / "charger-generic.yaml")
        .read_text()
        .replace("type: i16, scale: 0.1, unit: A", "type: i17, scale: 0.1, unit: A", 1)
    )
    r = swapd("check-config", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert any(
        ln.startswith(f"{path}:") and "chargers.0.map: invalid register map" in ln for ln in lines
    )
    assert any(ln.startswith(f"{m}:") and "output_current_a" in ln for ln in lines), r.stderr


def test_relative_config_path_resolves_state_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = station_copy(tmp_path)
    path.write_text(
        path.read_text().replace(f"state_dir: {tmp_path / 'state'}", "state_dir: var/state")
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("cfg") / "station.yaml")
    assert cfg.station.state_dir == tmp_path / "cfg" / "var" / "state"
    assert (
        cfg.station.state_dir.is_absolute()
        and cfg.resolve(cfg.station.state_dir) == cfg.station.state_dir
    )
    assert cfg.telemetry.outbox_path == tmp_path / "cfg" / "var" / "state" / "outbox.sqlite"


def test_builtin_names_resolve_to_shipped_package_data(tmp_path: Path) -> None:
    cfg = load_config(station_copy(tmp_path))
    assert cfg.chargers[0].map == "builtin:charger-generic"
    assert cfg.robot.map == "builtin:robot-plc" and cfg.robot.steps == "builtin:swap-steps"
    # Shipped files are found in the installed packages, not beside the config.
    assert cfg.robot_map().name == "robot-plc.yaml" and cfg.robot_map().is_file()
    assert cfg.step_graph().name == "swap-steps.yaml" and cfg.step_graph().is_file()
    assert not (tmp_path / "cfg" / "registers").exists()


def test_unknown_builtin_map_is_a_clear_config_error(tmp_path: Path) -> None:
    path = station_copy(
        tmp_path,
        {
            "port: 15022, unit_id: 1, map: builtin:charger-generic": "port: 15022, unit_id: 1, map: builtin:charger-nope"
        },
    )
    r = swapd("check-config", str(path))
    assert r.returncode == 2
    line = next(ln for ln in r.stderr.splitlines() if "chargers.1.map" in ln)
    assert line.startswith(f"{path}:")
    assert "builtin:charger-nope" in line and "builtin:charger-generic" in line, line


def test_ids_that_become_topic_levels_refuse_dots(tmp_path: Path) -> None:
    """Slot and charger ids name MQTT topics: a '.' breaks NATS (subject separator)."""
    path = station_copy(tmp_path, {"id: ch02,": "id: ch.02,", "charger: ch02": "charger: ch.02"})
    with pytest.raises(DataFileError) as ei:
        load_config(path)
    msgs = [f"{p.field}: {p.message}" for p in ei.value.problems]
    assert any(m.startswith("chargers.1.id: charger id 'ch.02' is not a plain") for m in msgs), msgs


def test_an_old_config_is_refused_naming_what_changed(tmp_path: Path) -> None:
    path = station_copy(tmp_path, {"version: 2 ": "# no version "})
    r = swapd("check-config", str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{path}:")
    assert ": version: config version 1 (no version key) is older than this swapd" in lines[0]
    assert "then set version: 2" in lines[0]
    assert any("changed in 2:" in ln and "builtin:charger-generic" in ln for ln in lines), lines
    assert any("changed in 2:" in ln and "robot.steps" in ln for ln in lines), lines
    # Only the version is reported: the rest of an old file would read as noise.
    assert all(": version: " in ln for ln in lines), lines


def test_a_config_from_a_newer_swapd_is_refused(tmp_path: Path) -> None:
    path = station_copy(tmp_path, {"version: 2 ": "version: 3 "})
    with pytest.raises(DataFileError) as ei:
        load_config(path)
    (p,) = ei.value.problems
    assert p.field == "version" and p.line == 4
    assert "config version 3 is newer than this swapd reads (2)" in p.message
    path.write_text(path.read_text().replace("version: 3 ", "version: two "))
    with pytest.raises(DataFileError, match="version: must be an integer"):
        load_config(path)


def test_missing_robot_map_fails_check_config_with_file_line(tmp_path: Path) -> None:
    path = station_copy(tmp_path, {"map: builtin:robot-plc": "map: registers/nope.yaml"})
    r = swapd("check-config", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "robot.map" in ln]
    file, line_no, fld = line.split(":")[:3]
    assert file == str(path) and fld.strip() == "robot.map" and "file not found" in line
    assert "nope.yaml" in path.read_text().splitlines()[int(line_no) - 1]


# ---- scenario files (swapd demo / simulate-day --scenario) ---------------------------------

SCENARIOS = Path(__file__).resolve().parents[2] / "edge" / "scheduler" / "scenarios"


def _bad_scenario(path: Path) -> Path:
    """A shipped scenario with three mistakes: a typo'd key, a slot beyond the station, an
    event time that is not HH:MM."""
    text = (SCENARIOS / "grid-emergency-day.yaml").read_text()
    text = text.replace("  initial_soc_pct: 95", "  inital_soc_pct: 95", 1)
    text = text.replace("  cap_kw: 600", "  cap_kw: -5", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _lines(stderr: str, path: Path) -> dict[str, int]:
    """field -> line, for the problems reported in `path`."""
    out = {}
    for ln in stderr.strip().splitlines():
        file, line, field, _ = ln.split(":", 3)
        if file == str(path):
            out[field.strip()] = int(line)
    return out


def test_shipped_scenarios_pass_check_config() -> None:
    names = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    r = swapd("check-config", *(f"--scenario=builtin:{n}" for n in names))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["scenarios"]) == len(names) >= 4


def test_scenario_file_by_itself_file_line_field(tmp_path: Path) -> None:
    bad = _bad_scenario(tmp_path / "day.yaml")
    r = swapd("check-config", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    found = _lines(r.stderr, bad)
    text = bad.read_text().splitlines()
    assert "inital_soc_pct:" in text[found["station.inital_soc_pct"] - 1]
    assert "cap_kw: -5" in text[found["grid.cap_kw"] - 1]
    assert "station.initial_soc_pct" in found  # the missing one, at its section


def test_scenarios_beside_a_config_and_named_ones_are_checked(tmp_path: Path) -> None:
    cfg = station_copy(tmp_path)
    bad = _bad_scenario(cfg.parent / "scenarios" / "rush.yaml")
    r = swapd("check-config", str(cfg))
    assert r.returncode == 2
    assert _lines(r.stderr, bad), r.stderr
    bad.unlink()
    r = swapd("check-config", str(cfg), "--scenario", "builtin:city-taxi-day")
    assert r.returncode == 0, r.stderr
    r = swapd("check-config", str(cfg), "--scenario", "builtin:no-such-day")
    assert r.returncode == 2 and "no shipped file 'builtin:no-such-day'" in r.stderr
    r = swapd("check-config", str(cfg), "--scenario", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml:0: <root>: file not found" in r.stderr


def test_check_config_needs_a_file() -> None:
    r = swapd("check-config")
    assert r.returncode == 2 and "name a station config or a scenario" in r.stderr
