"""One daemon per station: a second `swapd run` on the same state directory exits 2 with one
line naming the running one's pid, and leaves the first one's ctl socket alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.app.daemon import StationLocked, lock_state_dir
from tests.edge.foundation_helpers import station_copy


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    held = lock_state_dir(tmp_path / "state")
    try:
        try:
            lock_state_dir(tmp_path / "state")
        except StationLocked as e:
            assert f"pid {os.getpid()}" in str(e)
        else:
            raise AssertionError("a second lock on the same state dir was granted")
    finally:
        held.close()
    lock_state_dir(tmp_path / "state").close()  # free again once the holder is gone


def test_second_daemon_exits_2_and_never_touches_the_first_ones_socket(tmp_path: Path) -> None:
    cfg = station_copy(tmp_path)
    sock = cfg.parent / "var" / "ctl.sock"
    cmd = [sys.executable, "-m", "edge", "run", "--config", str(cfg)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert first.poll() is None, "the first daemon died"
            assert time.monotonic() < deadline, "the first daemon never opened its socket"
            time.sleep(0.05)
        inode = sock.stat().st_ino
        second = subprocess.run(cmd, capture_output=True, timeout=30)
        assert second.returncode == 2
        lines = second.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0], lines
        assert sock.exists() and sock.stat().st_ino == inode
        status = subprocess.run(
            [sys.executable, "-m", "edge", "ctl", "--socket", str(sock), "status"],
            capture_output=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(timeout=15)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
