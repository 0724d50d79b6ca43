"""Fault campaign (issue 12): random fault schedules over the composed station, the outside
monitor watching. Each schedule: a fresh station, `--length` seconds of station time with 3-8
faults drawn from every kind (chargers, packs, PLC, the daemon itself, a full disk).

    .venv/bin/python bench/fault_campaign.py --runs N [--seed S] [--length 120] [--jobs J]
        [--max-wall SECONDS] [--overrun SECONDS] [--in-process]

Prints per schedule the faults injected, invariant violations and recoveries, then totals:
faults injected, violations, recoveries, wall time. Every violation prints its seed and the
command that replays it. Station time runs at wall-clock rate (the GB/T and Modbus timers the
invariants are about are real-time in the daemon, see docs/safety.md, "Fault campaign"), so a
long campaign runs `--jobs` schedules at once, each in its own worker process with its own
station, broker, ports and state directory. `--max-wall` stops handing out schedules after that
many seconds; the totals then say how many ran. SIGTERM or Ctrl-C stops it the same way at
once: the schedules running are abandoned (their stations, brokers and daemons stopped), the
totals of those that finished are printed. A schedule still running `--overrun` seconds after
its `--length` is cancelled and counted as a harness error (no verdict), printed with the stacks
of every task in its worker; if the cancel does not end it either, the worker and its daemon are
killed and a fresh worker takes the next seed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.app.daemon import dump_tasks  # noqa: E402
from edge.app.logs import configure_logging  # noqa: E402
from tests.conftest import Broker  # noqa: E402
from tests.safety.harness import cancel_all, one_schedule, replay_command  # noqa: E402

HERE = Path(__file__).resolve()
T = TypeVar("T")


def describe(e: BaseException) -> str:
    """Every leaf of an exception (group) with the frame that raised it: a harness error on a
    loaded CI machine must be diagnosable from the printed line alone."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


class Overran(Exception):
    """A schedule ran past its deadline; `stuck` if it did not end after its cancel either."""

    def __init__(self, message: str, stuck: bool) -> None:
        super().__init__(message)
        self.stuck = stuck


async def within(deadline_s: float, work: Awaitable[T], grace_s: float = 60.0) -> T:
    """`work`'s result, or `Overran` with every task's stack once `deadline_s` has passed: a
    hung schedule becomes a harness error that names where it hung, not a campaign that waits
    forever (seed 102389 waited 58 min). The stacks are taken before the cancel."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=deadline_s)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task}, timeout=grace_s)
        raise
    if task.done():
        return task.result()
    stacks = io.StringIO()
    dump_tasks(stacks)
    task.cancel()
    await asyncio.wait({task}, timeout=grace_s)
    ended = (
        "ended by its cancel" if task.done() else f"still running {grace_s:.0f} s after its cancel"
    )
    error = task.exception() if task.done() and not task.cancelled() else None
    if error is not None:
        ended += f" ({describe(error)})"
    raise Overran(
        f"schedule overran its {deadline_s:.0f} s deadline, {ended}; {stacks.getvalue()}",
        stuck=not task.done(),
    )


async def run_seeds(args: argparse.Namespace, seeds: list[int], report: Any) -> bool:
    """Run `seeds` one after another against one private broker; `report(result)` each.
    False if a schedule was stuck past its deadline and its cancel: this worker should end."""
    with tempfile.TemporaryDirectory(prefix="fault-campaign-", ignore_cleanup_errors=True) as d:
        root = Path(d)
        broker = Broker(root)
        broker.start()
        try:
            for seed in seeds:
                tmp = root / f"run-{seed}"
                tmp.mkdir()
                res: dict[str, Any] = {"seed": seed}
                try:
                    _, out = await within(
                        args.length + args.overrun,
                        one_schedule(
                            tmp,
                            seed,
                            process=not args.in_process,
                            length_s=args.length,
                            broker=(broker.host, broker.port),
                            slots=args.slots,
                        ),
                    )
                except Overran as e:
                    res.update(error=str(e), stuck=e.stuck)
                    report(res)
                    if e.stuck:
                        return False
                    continue
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
    return True


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
    `--max-wall` has passed); each reports one JSON line per schedule. A worker that ends (a
    schedule stuck past its deadline and its cancel kills it and its daemon) is replaced."""
    queue = list(seeds)
    t0 = time.monotonic()
    base = [sys.executable, str(HERE), "--worker", "--length", str(args.length)]
    base += ["--slots", str(args.slots), "--overrun", str(args.overrun)]
    base += ["--in-process"] if args.in_process else []

    def more() -> bool:
        return bool(queue) and (args.max_wall is None or time.monotonic() - t0 < args.max_wall)

    async def job() -> None:
        while more():
            # its own session: a stuck worker kills its process group (itself, its daemon)
            proc = await asyncio.create_subprocess_exec(
                *base,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
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
            while more():
                seed = queue.pop(0)
                proc.stdin.write(f"{seed}\n".encode())
                await proc.stdin.drain()
                line = await proc.stdout.readline()
                if not line:
                    await proc.wait()
                    totals.add({"seed": seed, "error": f"worker exited ({proc.returncode})"})
                    return
                res = json.loads(line)
                totals.add(res)
                if res.get("stuck"):
                    return
        finally:
            proc.stdin.close()

    await asyncio.gather(*(job() for _ in range(args.jobs)))


async def worker(args: argparse.Namespace) -> bool:
    """One seed per line on stdin, one JSON result per line on stdout. False once a schedule
    was stuck (it still runs after its cancel): this worker takes no more seeds."""
    loop = asyncio.get_running_loop()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the results on the channel

    def report(res: dict[str, Any]) -> None:
        out.write(json.dumps(res) + "\n")
        out.flush()

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return True
        if not await run_seeds(args, [int(line)], report):
            return False


async def main_async(args: argparse.Namespace) -> int:
    totals = Totals(args.in_process)
    seeds = list(range(args.seed, args.seed + args.runs))
    t0 = time.monotonic()
    try:
        await run_parallel(args, seeds, totals)
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
    stuck = False
    with contextlib.suppress(asyncio.CancelledError):
        stuck = not await worker(args)
    # `asyncio.run` would wait forever for a task that swallows its cancels (a stuck schedule).
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if left and not stuck:
        with contextlib.suppress(TimeoutError):
            await cancel_all(left)
    if stuck or not all(t.done() for t in left):
        # Nothing in this loop can be trusted to end: end the worker and its children (the
        # daemon, the broker) at once. The campaign gave it its own session; it starts a fresh
        # worker for the next seed.
        sys.stderr.flush()
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(3)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--length", type=float, default=120.0, help="station seconds per schedule")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=1, help="schedules at once (worker processes)")
    ap.add_argument("--max-wall", type=float, default=None, help="stop starting runs after this")
    ap.add_argument(
        "--overrun",
        type=float,
        default=300.0,
        help="seconds past --length after which a schedule is a harness error (with stacks)",
    )
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
