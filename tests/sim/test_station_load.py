"""The station load bench, short: real daemon, sim, broker; its JSON line and no false trips.
Also its pieces: the packs' frame record (sim/loadstats.py), the perf dump, the cgroup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from drivers.can.codec import CanFrame, default_codec
from edge.app.perf import PerfProbe
from sim.loadstats import FrameStats

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "daemon_cpu_pct",
    "rss_mb",
    "ccs_jitter_p99_ms",
    "ccs_period_p99_ms",
    "modbus_cycle_p99_ms",
    "loop_lag_p99_ms",
    "gc_pause_max_ms",
    "cem",
    "cst",
    "timeouts",
    "modbus_offline",
}


@pytest.mark.timeout(60)
def test_short_bench_prints_its_figures_and_nothing_trips() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "station_load.py"),
            "--slots",
            "4",
            "--duration",
            "12",
            "--warmup",
            "10",
        ],
        capture_output=True,
        timeout=55,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    r = orjson.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert r.keys() >= KEYS
    assert (r["cem"], r["cst"], r["timeouts"], r["modbus_offline"]) == (0, 0, 0, 0), r
    # One full pack (for the vehicle), two charging: CCS reached them at about 20 Hz each, the
    # chargers were polled, and every slot's telemetry went out.
    assert r["ccs_periods"] > 2 * 20 * 12 * 0.8, r
    assert 40 < r["ccs_period_p99_ms"] < 200, r
    assert r["modbus_cycles"] > 0 and r["daemon_cpu_pct"] > 0 and r["rss_mb"] > 10, r
    assert r["slots_publishing"] == 4 and r["slot_telemetry_hz"] > 5, r
    assert r["exit_codes"] == {"broker": 0, "sim": 0, "daemon": 0}, r


def _frame(name: str, data: bytes = b"\xff" * 8) -> CanFrame:
    return CanFrame(default_codec().frame_id(name), data)


def test_frame_stats_periods_and_cst_classes() -> None:
    now = [0.0]
    stats = FrameStats(clock=lambda: now[0])
    got: list[CanFrame] = []
    on = stats.wrap("s01", got.append)
    timeouts: list[str] = []
    stats.seated("s01", lambda: timeouts)
    for t in (0.0, 0.05, 0.10, 0.18):
        now[0] = t
        on(_frame("CCS"))
    assert len(got) == 4  # every frame still reaches the BMS
    snap = stats.snapshot()
    assert snap["ccs_period_ms"]["n"] == 3
    assert snap["ccs_period_ms"]["max"] == pytest.approx(80.0)
    assert snap["ccs_jitter_ms"]["max"] == pytest.approx(30.0)
    # A manual CST followed by the pack leaving: the swap's; a fault CST: a false trip (once,
    # however often it is repeated); a CEM; a BMS-side timeout.
    now[0] = 1.0
    on(_frame("CST", bytes([0b1111_0111, 0xFF, 0xFF, 0xFF])))  # manual stop
    stats.unseated("s01")
    stats.wrap("s01", got.append)
    stats.seated("s01", lambda: timeouts)
    now[0] = 10.0
    on(_frame("CST", bytes([0b1101_1111, 0xFF, 0xFF, 0xFF])))  # fault stop
    now[0] = 10.01
    on(_frame("CST", bytes([0b1101_1111, 0xFF, 0xFF, 0xFF])))
    on(_frame("CEM"))
    timeouts.append("CCS")
    snap = stats.snapshot()
    assert snap["frames"] == {"cst_swap": 1, "cst": 1, "cem": 1}
    assert snap["bms_timeouts"] == {"CCS": 1}
    stats.reset()
    assert stats.snapshot()["frames"] == {"cst": 0} and stats.snapshot()["bms_timeouts"] == {}


async def test_perf_probe_dumps_a_window_on_sigusr1(tmp_path: Path) -> None:
    import asyncio
    import signal

    out = tmp_path / "perf.json"
    probe = PerfProbe(out, tick_s=0.01)
    probe.start()
    try:
        probe.add("x_ms", 3.0)
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)
        async with asyncio.timeout(5):
            while not out.exists():
                await asyncio.sleep(0.01)
    finally:
        probe.stop()
    doc = orjson.loads(out.read_bytes())
    assert doc["seq"] == 2  # the signal's dump, then stop()'s
    assert doc["samples"]["x_ms"]["n"] == 0  # a new window after the first dump


def test_cgroup_is_created_with_the_quota_and_removed() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import station_load
    finally:
        sys.path.remove(str(ROOT / "bench"))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cg = station_load.Cgroup(0.25)
        path = cg.path
        try:
            cg.add(child.pid)
            assert str(child.pid) in (path / "cgroup.procs").read_text().split()
            if cg.version == 1:
                assert (path / "cpu.cfs_quota_us").read_text().strip() == "2500"
                assert (path / "cpu.cfs_period_us").read_text().strip() == "10000"
            else:
                assert (path / "cpu.max").read_text().split() == ["2500", "10000"]
        finally:
            cg.close()
        deadline = time.monotonic() + 5
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists()
        assert child.poll() is None  # moved back out, still running
    finally:
        child.kill()
        child.wait()
