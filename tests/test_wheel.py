"""A wheel that runs: built from this checkout, installed from the lock (requirements/demo.txt: the daemon's plus the demo's) into a fresh venv
outside the checkout, it checks a config, runs against `swapd sim` for a few seconds and runs
the demo headless. Every command runs in a folder outside the checkout with no PYTHONPATH, so
the shipped data (DBC, maps, step graph, scenarios) must come from the installed packages."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.release_fixtures import ROOT, Release, clean_env, run

pytestmark = pytest.mark.slow


def bench_cfg(release: Release, work: Path, mqtt_port: int) -> Path:
    """A private copy of the example station (free loopback ports, SLCAN over TCP), written by
    the installed package's own sim.benchcfg."""
    src = work / "station.yaml"
    src.write_text((ROOT / "config" / "station.yaml").read_text())
    code = (
        "import sys; from sim.benchcfg import bench_config; "
        f"print(bench_config(sys.argv[1], sys.argv[2], bus='slcan', mqtt_port={mqtt_port}))"
    )
    r = run(release.venv / "bin" / "python", "-c", code, src, work / "bench", cwd=work)
    return Path(r.stdout.strip())


def test_wheel_ships_the_data_and_records_its_commit(release: Release, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(release.wheel).namelist())
    for f in (
        "drivers/can/gbt27930.dbc",
        "drivers/robot/robot-plc.yaml",
        "drivers/modbus/maps/charger-generic.yaml",
        "edge/swap/swap-steps.yaml",
        "edge/scheduler/scenarios/city-taxi-day.yaml",
        "edge/_build_info.json",
    ):
        assert f in names, f
    assert not any(n.startswith(("tests/", "config/")) for n in names)
    where = run(
        release.venv / "bin" / "python", "-c", "import edge; print(edge.__file__)", cwd=tmp_path
    )
    assert Path(where.stdout.strip()).is_relative_to(release.venv)
    head = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = run(release.swapd, "--version", cwd=tmp_path).stdout.strip()
    assert out.startswith("swapd 0.") and f"(commit {head}" in out, out


@pytest.mark.timeout(150)
def test_installed_wheel_checks_runs_against_sim_and_demos(
    release: Release, mosquitto: Broker, tmp_path: Path
) -> None:
    cfg = bench_cfg(release, tmp_path, mosquitto.port)
    ok = run(release.swapd, "check-config", cfg, cwd=tmp_path)
    assert json.loads(ok.stdout)["ok"] is True
    scenario = run(
        release.swapd,
        "simulate-day",
        "--scenario",
        "builtin:city-taxi-day",
        "--policy",
        "naive",
        cwd=tmp_path,
    )
    kpis = json.loads(scenario.stdout.strip().splitlines()[-1])
    assert kpis["scenario"] == "city-taxi-day" and kpis["swaps_served"] > 0

    env = clean_env()
    sim_log, run_log = (tmp_path / "sim.log").open("wb"), (tmp_path / "run.log").open("wb")
    sim = subprocess.Popen(
        [str(release.swapd), "sim", "--config", str(cfg), "--speed", "20"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=sim_log,
    )
    daemon: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        assert json.loads(sim.stdout.readline())["ready"] is True
        daemon = subprocess.Popen(
            [str(release.swapd), "run", "--config", str(cfg)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=run_log,
        )
        sock = cfg.parent / "ctl.sock"
        deadline = time.monotonic() + 30
        status: dict[str, object] = {}
        while time.monotonic() < deadline and daemon.poll() is None:
            r = subprocess.run(
                [str(release.swapd), "ctl", "--socket", str(sock), "status"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=20,
            )
            if r.returncode == 0:
                status = json.loads(r.stdout)
                break
            time.sleep(0.3)
        assert status, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(3)  # a few seconds of polling chargers, CAN sessions, telemetry
        assert daemon.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(
                "no stop within 30 s of SIGTERM\n" + (tmp_path / "run.log").read_text()[-4000:]
            )
        assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        for p in (daemon, sim):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if sim.stdout is not None:
            sim.stdout.close()
        sim_log.close()
        run_log.close()
    log = (tmp_path / "run.log").read_text()
    assert "Traceback" not in log, log[-3000:]

    demo = run(
        release.swapd,
        "demo",
        "--headless",
        "--duration",
        "15",
        "--speed",
        "20",
        "--config",
        cfg,
        "--broker",
        f"mqtt://127.0.0.1:{mosquitto.port}",
        cwd=tmp_path,
        timeout=90,
    )
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["swaps_failed"] == 0, summary
