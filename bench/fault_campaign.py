"""Fault campaign (issue 12): random fault schedules over the composed station, the outside
monitor watching. Each schedule: a fresh station, `--length` seconds of station time with 3-8
faults drawn from every kind (chargers, packs, PLC, the daemon itself, a full disk).

    .venv/bin/python bench/fault_campaign.py --runs N [--seed S] [--length 120] [--jobs J]
        [--max-wall SECONDS] [--in-process]

Prints per schedule the faults injected, invariant violations and recoveries, then totals:
faults injected, violations, recoveries, wall time. Every violation prints its seed and the
command that replays it. Station time runs at wall-clock rate (the GB/T and Modbus timers the
invariants are about are real-time in the daemon, see docs/safety.md, "Fault campaign"), so a
long campaign runs `--jobs` schedules at once, each in its own worker process with its own
station, broker, ports and state directory. `--max-wall` stops handing out schedules after that
many seconds; the totals then say how many ran. SIGTERM or Ctrl-C stops it the same way at
once: the schedules running are abandoned (their stations, brokers and daemons stopped), the
totals of those that finished are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.app.logs import configure_logging  # noqa: E402
from tests.conftest import Broker  # noqa: E402
from tests.safety.harness import one_schedule, replay_command  # noqa: E402

HERE = Path(__file__).resolve()


def describe(e: BaseException) -> str:
    """Every leaf of an exception (group) with the frame that raised it: a harness error on a
    loaded CI machine must be diagnosable from the printed line alone."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


async def run_seeds(args: argparse.Namespace, seeds: list[int], report: Any) -> None:
    """Run `seeds` one after another against one private broker; `report(result)` each."""
    with tempfile.TemporaryDirectory(prefix="fault-campaign-") as d:
        root = Path(d)
        broker = Broker(root)
        broker.start()
        try:
            for seed in seeds:
                tmp = root / f"run-{seed}"
                tmp.mkdir()
                res: dict[str, Any] = {"seed": seed}
                try:
                    _, out = await one_schedule(
                        tmp,
                        seed,
                        process=not args.in_process,
                        length_s=args.length,
                        broker=(broker.host, broker.port),
                        slots=args.slots,
                    )
                except Exception as e:  # noqa: BLE001 - one broken run must not end the campaign
                    res["error"] = describe(e)
                else:
                    res.update(
                        faults=out.injected,
                        violations=out.violations,
                        recoveries=out.recoveries,
                        not_recovered=out.not_recovered,
                        notes=out.notes,
                        swaps=out.swaps_served,
                        wall_s=out.wall_s,
                        station_s=out.station_s,
                    )
                report(res)
        finally:
            broker.stop()


class Totals:
    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process
        self.runs = 0
        self.faults = 0
        self.violations = 0
        self.recoveries = 0
        self.not_recovered = 0
        self.swaps = 0
        self.station_s = 0.0
        self.failing: list[int] = []
        self.harness_errors: list[int] = []

    def add(self, res: dict[str, Any]) -> None:
        seed = int(res["seed"])
        if "error" in res:
            self.harness_errors.append(seed)
            print(f"seed {seed}: HARNESS ERROR {res['error']}", flush=True)
            return
        self.runs += 1
        self.station_s += res["station_s"]
        self.faults += len(res["faults"])
        self.violations += len(res["violations"])
        self.recoveries += res["recoveries"]
        self.not_recovered += len(res["not_recovered"])
        self.swaps += res["swaps"]
        print(
            f"seed {seed}: {len(res['faults'])} faults, {len(res['violations'])} violations, "
            f"{res['recoveries']} recoveries, {res['swaps']} swaps, {res['wall_s']:.0f} s",
            flush=True,
        )
        for f in res["faults"]:
            print(f"    fault {f}")
        for n in res["notes"]:
            print(f"    note {n}")
        for n in res["not_recovered"]:
            print(f"    NOT RECOVERED {n}")
        for v in res["violations"]:
            print(f"    VIOLATION {v}")
        if res["violations"]:
            self.failing.append(seed)
            print(f"    replay: {replay_command(seed, not self.in_process)}", flush=True)

    def summary(self, wall: float, jobs: int) -> int:
        print(
            f"\n{self.runs} schedules, {self.faults} faults injected, "
            f"{self.violations} invariant violations, {self.recoveries} recoveries, "
            f"{self.not_recovered} not recovered, {self.swaps} swaps served; "
            f"{self.station_s:.0f} s station time in {wall:.0f} s wall with {jobs} job(s) "
            f"({self.station_s / max(wall, 1e-9):.2f}x)"
        )
        if self.harness_errors:
            print(f"harness errors (no verdict) for seeds {sorted(self.harness_errors)}")
        for seed in sorted(self.failing):
            print(f"violation seed {seed}: {replay_command(seed, not self.in_process)}")
        return 1 if self.failing or self.harness_errors else 0


async def run_parallel(args: argparse.Namespace, seeds: list[int], totals: Totals) -> None:
    """`--jobs` worker processes take the next seed from this queue until it is empty (or
    `--max-wall` has passed); each reports one JSON line per schedule."""
    queue = list(seeds)
    t0 = time.monotonic()
    base = [sys.executable, str(HERE), "--worker", "--length", str(args.length)]
    base += ["--slots", str(args.slots)] + (["--in-process"] if args.in_process else [])

    async def job() -> None:
        proc = await asyncio.create_subprocess_exec(
            *base, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            await _serve(proc)
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.terminate()  # the worker stops its station and broker
            raise
        finally:
            await proc.wait()

    async def _serve(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            while queue and (args.max_wall is None or time.monotonic() - t0 < args.max_wall):
                seed = queue.pop(0)
                proc.stdin.write(f"{seed}\n".encode())
                await proc.stdin.drain()
                line = await proc.stdout.readline()
                if not line:
                    totals.add({"seed": seed, "error": f"worker exited ({proc.returncode})"})
                    return
                totals.add(json.loads(line))
        finally:
            proc.stdin.close()

    await asyncio.gather(*(job() for _ in range(args.jobs)))


async def worker(args: argparse.Namespace) -> None:
    """One seed per line on stdin, one JSON result per line on stdout."""
    loop = asyncio.get_running_loop()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the results on the channel

    def report(res: dict[str, Any]) -> None:
        out.write(json.dumps(res) + "\n")
        out.flush()

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        await run_seeds(args, [int(line)], report)


async def main_async(args: argparse.Namespace) -> int:
    totals = Totals(args.in_process)
    seeds = list(range(args.seed, args.seed + args.runs))
    t0 = time.monotonic()
    try:
        if args.jobs > 1:
            await run_parallel(args, seeds, totals)
        else:
            for seed in seeds:
                if args.max_wall is not None and time.monotonic() - t0 >= args.max_wall:
                    break
                await run_seeds(args, [seed], totals.add)
    except asyncio.CancelledError:
        print("\nstopped: the schedules running were abandoned", flush=True)
    return totals.summary(time.monotonic() - t0, args.jobs)


def _cancel_on_signals() -> None:
    """SIGTERM and SIGINT cancel the main task, so every `finally` (brokers, daemons) runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)


async def _main(args: argparse.Namespace) -> int:
    _cancel_on_signals()
    return await main_async(args)


async def _worker(args: argparse.Namespace) -> None:
    _cancel_on_signals()
    with contextlib.suppress(asyncio.CancelledError):
        await worker(args)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--length", type=float, default=120.0, help="station seconds per schedule")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1, help="schedules at once (worker processes)")
    ap.add_argument("--max-wall", type=float, default=None, help="stop starting runs after this")
    ap.add_argument(
        "--in-process", action="store_true", help="daemon in this process (no kill -9/full disk)"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        # the figures go to the parent as JSON on stdout; the logs stay quiet
        configure_logging(level="error")
        asyncio.run(_worker(args))
        return 0
    configure_logging(level="warning")  # the figures on stdout; the daemon logs to its file
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
