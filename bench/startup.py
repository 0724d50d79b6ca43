"""Time from `swapd run` to READY=1 and idle RSS, over a real sd_notify socket.

    .venv/bin/python bench/startup.py [--runs 5]

Goals (issue 2): READY < 2 s, idle RSS < 60 MB. Also lists heavy modules the daemon must never
import (scipy, numpy, matplotlib, UI toolkits). Then (issue 16) with `grid.policy: predictive`:
the daemon's idle RSS < 80 MB and its solver child process's < 150 MB.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def one_run(cfg: Path, tmp: Path, idle_s: float) -> tuple[float, float, float]:
    sock_path = str(tmp / f"notify-{time.monotonic_ns()}.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while b"READY=1" not in rx.recv(4096):
            pass
        ready = time.monotonic() - t0
        time.sleep(idle_s)
        rss = rss_mb(proc.pid)
        kids = children(proc.pid)
        child_rss = max((rss_mb(k) for k in kids), default=float("nan"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
        rx.close()
    return ready, rss, child_rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle-s", type=float, default=2.0)
    ap.add_argument("--config", default=str(ROOT / "config" / "station.yaml"))
    ap.add_argument("--predictive-runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg_dir = tmp / "cfg"
        shutil.copytree(Path(a.config).parent, cfg_dir)
        cfg = cfg_dir / Path(a.config).name
        cfg.write_text(
            cfg.read_text().replace("state_dir: var/state", f"state_dir: {tmp / 'state'}")
        )
        results = [one_run(cfg, tmp, a.idle_s) for _ in range(a.runs)]
        pred_cfg = cfg.with_name("predictive.yaml")
        text = cfg.read_text()
        pred_cfg.write_text(re.sub(r"(?m)^(\s*policy:\s*)\w+", r"\1predictive", text, count=1))
        # Idle long enough for the solver process to start and answer the first replan.
        pred = [one_run(pred_cfg, tmp, max(a.idle_s, 5.0)) for _ in range(a.predictive_runs)]
    ready = [r[0] for r in results]
    rss = [r[1] for r in results]
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, edge.app.daemon, edge.app.station; "
            "print(','.join(m for m in ('scipy','numpy','matplotlib','tkinter','textual','PySide6') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(
        f"time to READY=1: median {statistics.median(ready) * 1000:.0f} ms, max {max(ready) * 1000:.0f} ms (goal < 2000 ms), runs={len(ready)}"
    )
    print(
        f"idle RSS after {a.idle_s:.0f} s: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB (goal < 60 MB)"
    )
    print(f"heavy modules imported by the daemon path: {heavy or 'none'}")
    if pred:
        d_rss = [r[1] for r in pred]
        s_rss = [r[2] for r in pred]
        print(
            f"predictive: daemon idle RSS median {statistics.median(d_rss):.1f} MB, max "
            f"{max(d_rss):.1f} MB (goal < 80 MB); solver process RSS median "
            f"{statistics.median(s_rss):.1f} MB, max {max(s_rss):.1f} MB (goal < 150 MB), "
            f"runs={len(pred)}"
        )


if __name__ == "__main__":
    main()
