"""Fault campaign (issue 12): random fault schedules over the composed station, the outside
monitor watching. Each schedule: a fresh station, `--length` seconds of station time with 3-8
faults drawn from every kind (chargers, packs, PLC, the daemon itself, a full disk).

    .venv/bin/python bench/fault_campaign.py --runs N [--seed S] [--length 120] [--in-process]

Prints per schedule the faults injected, invariant violations and recoveries, then totals. Every
violation prints its seed and the command that replays it. Station time runs at wall-clock rate:
the GB/T and Modbus timers the invariants are about are real-time in the daemon (see
docs/safety.md, "Campaign").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.app.logs import configure_logging  # noqa: E402
from tests.conftest import Broker  # noqa: E402
from tests.safety.harness import one_schedule, replay_command  # noqa: E402


async def main_async(args: argparse.Namespace) -> int:
    totals = {"faults": 0, "violations": 0, "recoveries": 0, "not_recovered": 0, "swaps": 0}
    failing: list[int] = []
    t0 = time.monotonic()
    station_s = 0.0
    with tempfile.TemporaryDirectory(prefix="fault-campaign-") as d:
        root = Path(d)
        broker = Broker(root)
        broker.start()
        try:
            for i in range(args.runs):
                seed = args.seed + i
                tmp = root / f"run-{seed}"
                tmp.mkdir()
                sched, out = await one_schedule(
                    tmp,
                    seed,
                    process=not args.in_process,
                    length_s=args.length,
                    broker=(broker.host, broker.port),
                    slots=args.slots,
                )
                station_s += out.station_s
                totals["faults"] += len(out.injected)
                totals["violations"] += len(out.violations)
                totals["recoveries"] += out.recoveries
                totals["not_recovered"] += len(out.not_recovered)
                totals["swaps"] += out.swaps_served
                print(
                    f"seed {seed}: {len(out.injected)} faults, {len(out.violations)} violations, "
                    f"{out.recoveries} recoveries, {out.swaps_served} swaps, "
                    f"{out.wall_s:.0f} s",
                    flush=True,
                )
                for f in out.injected:
                    print(f"    fault {f}")
                for n in out.notes:
                    print(f"    note {n}")
                for n in out.not_recovered:
                    print(f"    NOT RECOVERED {n}")
                for v in out.violations:
                    print(f"    VIOLATION {v}")
                if out.violations:
                    failing.append(seed)
                    print(f"    replay: {replay_command(seed, not args.in_process)}")
        finally:
            broker.stop()
    wall = time.monotonic() - t0
    print(
        f"\n{args.runs} schedules, {totals['faults']} faults injected, "
        f"{totals['violations']} invariant violations, {totals['recoveries']} recoveries, "
        f"{totals['not_recovered']} not recovered, {totals['swaps']} swaps served; "
        f"{station_s:.0f} s station time in {wall:.0f} s wall "
        f"({station_s / max(wall, 1e-9):.2f}x)"
    )
    for seed in failing:
        print(f"violation seed {seed}: {replay_command(seed, not args.in_process)}")
    return 1 if failing else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--length", type=float, default=120.0, help="station seconds per schedule")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument(
        "--in-process", action="store_true", help="daemon in this process (no kill -9/full disk)"
    )
    args = ap.parse_args()
    configure_logging(level="warning")  # the figures on stdout; the daemon logs to its file
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
