"""Swaps against the simulated robot PLC in another process, step times divided by --speed.

Reports the measured swap time (start_swap -> swap.completed) against the critical path of the
scaled step times; the difference is the software overhead (poll latency, journal fsyncs,
Modbus writes). Goal: overhead < 0.5 s per swap. Last stdout line: one JSON object.

    .venv/bin/python bench/swap_cycle.py --swaps 5 --speed 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.core.clock import SystemClock  # noqa: E402
from drivers.robot.contract import RobotContract  # noqa: E402
from drivers.robot.modbus_port import ModbusRobotPort  # noqa: E402
from edge.swap.choice import SlotView  # noqa: E402
from edge.swap.coordinator import SwapCoordinator  # noqa: E402
from edge.swap.inventory import SlotPlace  # noqa: E402
from edge.swap.journal import Journal  # noqa: E402
from edge.swap.messages import PackIdentity  # noqa: E402
from edge.swap.steps import load_step_graph  # noqa: E402
from edge.telemetry.models import Details  # noqa: E402
from sim.ports import free_port  # noqa: E402
from tests.doubles import RecordingAlarmSink  # noqa: E402

SLOTS = {f"s{n:02d}": n for n in range(1, 13)}
PACK_TYPE = "T20"


class TimedJournal(Journal):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.times_s: list[float] = []

    def commit(self, ts: str, records: Any, snapshot: dict[str, Any] | None) -> None:
        t0 = time.perf_counter()
        super().commit(ts, records, snapshot)
        self.times_s.append(time.perf_counter() - t0)


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> None:
        assert isinstance(details, Details), details
        self.items.append((time.perf_counter(), event_type, details.model_dump(mode="json")))
        self.changed.set()


class Outputs:
    async def output_off(self, slot_id: str) -> None:
        return None

    async def all_outputs_off(self) -> None:
        return None

    def emergency_off(self) -> None:
        return None

    def emergency_reset(self, occupied: frozenset[str], reserved: frozenset[str]) -> None:
        return None

    def set_reserved(self, reserved: frozenset[str], occupied: frozenset[str]) -> None:
        return None

    def pack_seated(self, slot_id: str) -> None:
        return None

    def pack_removed(self, slot_id: str) -> None:
        return None


class Views:
    """Every pack in the rack counts as charged (the bench measures motion, not charging)."""

    def __init__(self) -> None:
        self.coord: SwapCoordinator | None = None

    def slot_views(self) -> list[SlotView]:
        assert self.coord is not None
        inv = self.coord.core.inventory
        out = []
        for sid in SLOTS:
            rec = inv.at(SlotPlace(sid))
            out.append(
                SlotView(sid, rec.pack_id, rec.pack_type, soc_pct=95.0) if rec else SlotView(sid)
            )
        return out


def stored(events: Events, start: int) -> bool:
    return any(
        t == "swap.step" and d.get("step") == "store_depleted" and d["state"] == "done"
        for _, t, d in events.items[start:]
    )


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def wait(pred: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.001)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    contract = RobotContract.load()
    graph = load_step_graph(contract=contract)
    critical_s, _ = graph.critical_path(args.speed)
    occupied = list(range(1, 9))
    tcp = free_port()  # the simulator binds it
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim.devices.robot_plc",
        "--port",
        str(tcp),
        "--speed",
        str(args.speed),
        "--slots",
        "12",
        "--occupied",
        ",".join(map(str, occupied)),
        "--auto-vehicles",
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.stdout is not None
    await proc.stdout.readline()  # "ready"
    tmpdir = tempfile.TemporaryDirectory(prefix="swap-bench-")
    tmp = Path(tmpdir.name)
    journal = TimedJournal(tmp / "swap-journal.sqlite")
    port = ModbusRobotPort(contract, "127.0.0.1", tcp)
    await port.connect()
    events, views = Events(), Views()
    coord = SwapCoordinator(
        graph=graph,
        slot_numbers=SLOTS,
        port=port,
        journal=journal,
        clock=SystemClock(),
        outputs=Outputs(),
        slots=views,
        events=events,
        alarms=RecordingAlarmSink(),
        poll_active_s=args.poll_s,
        poll_idle_s=0.05,
    )
    views.coord = coord
    task = asyncio.create_task(coord.run(), name="bench-swap-coordinator")
    swap_s: list[float] = []
    polls: list[int] = []
    commits: list[int] = []
    try:
        async with asyncio.timeout(10):
            await coord.online.wait()
        for n in occupied:
            await coord.pack_docked(f"s{n:02d}", PackIdentity(f"P-{n:03d}", PACK_TYPE))
        for i in range(args.swaps):
            await wait(
                lambda: coord.core.plc is not None and coord.core.plc.inputs["vehicle_present"], 10
            )
            p0, c0, e0 = coord.polls, journal.commits, len(events.items)
            t0 = time.perf_counter()
            res = await coord.start_swap(f"V{i}", PACK_TYPE, f"P-CAR-{i}")
            await wait(lambda e0=e0: stored(events, e0), 60)
            await coord.pack_docked(res["store_slot"], PackIdentity(f"P-CAR-{i}", PACK_TYPE))
            await wait(
                lambda e0=e0: any(
                    t in ("swap.completed", "swap.failed") for _, t, _ in events.items[e0:]
                ),
                60,
            )
            t1 = next(
                ts for ts, t, _ in events.items[e0:] if t in ("swap.completed", "swap.failed")
            )
            swap_s.append(t1 - t0)
            polls.append(coord.polls - p0)
            commits.append(journal.commits - c0)
            # the released vehicle leaves; wait for it before the next one comes in
            await wait(
                lambda: coord.core.plc is not None and not coord.core.plc.inputs["vehicle_present"],
                10,
            )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        port.close()
        journal.close()
        proc.terminate()
        await proc.wait()
        tmpdir.cleanup()
    overhead = [s - critical_s for s in swap_s]
    fsync_ms = [t * 1000 for t in journal.times_s]
    return {
        "swaps": len(swap_s),
        "speed": args.speed,
        "critical_path_scaled_s": round(critical_s, 3),
        "series_scaled_s": round(graph.series_s() / args.speed, 3),
        "swap_s_median": round(statistics.median(swap_s), 3),
        "swap_s_max": round(max(swap_s), 3),
        "overhead_s_median": round(statistics.median(overhead), 3),
        "overhead_s_p99": round(pct(overhead, 0.99), 3),
        "overhead_per_critical_step_ms": round(1000 * statistics.median(overhead) / 13, 1),
        "journal_commits_per_swap": statistics.median(commits),
        "journal_commit_ms_median": round(statistics.median(fsync_ms), 2),
        "journal_commit_ms_p99": round(pct(fsync_ms, 0.99), 2),
        "plc_polls_per_swap": statistics.median(polls),
        "poll_period_s": args.poll_s,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--swaps", type=int, default=5)
    p.add_argument("--speed", type=float, default=20.0)
    p.add_argument("--poll-s", type=float, default=0.02)
    args = p.parse_args()
    r = asyncio.run(run(args))
    print(
        f"{r['swaps']} swaps at speed {r['speed']:g}: measured median {r['swap_s_median']} s "
        f"(max {r['swap_s_max']}) vs critical path {r['critical_path_scaled_s']} s "
        f"(series {r['series_scaled_s']} s)",
        file=sys.stderr,
    )
    print(
        f"software overhead per swap: median {r['overhead_s_median']} s, p99 {r['overhead_s_p99']} s "
        f"(goal < 0.5 s); journal commit median {r['journal_commit_ms_median']} ms "
        f"p99 {r['journal_commit_ms_p99']} ms, {r['journal_commits_per_swap']} commits/swap",
        file=sys.stderr,
    )
    print(orjson.dumps(r).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
