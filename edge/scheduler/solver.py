"""The predictive policy's solver process, and the daemon's side of it.

The daemon stays free of numpy/highspy and its event loop never waits on a solve: the
`SchedulerService` owns a `ProcessPlanner`, which runs `python -m edge.scheduler.solver` as a
child process and talks to it in JSON lines (one `PlanRequest` in, one `Plan` out). The child
first loads its libraries and says `{"ready": true}`; no question is sent before that, so a slow
start (seconds on a loaded machine) is never taken for a slow solve. A child not ready within
`start_timeout_s` is killed and started again. Only the newest request is sent; an answer that
takes longer than `reply_timeout_s` (wall clock) kills the child and comes back as a failed plan
("timeout"); a child that dies answers "solver_died" and is started again (after
`restart_delay_s`). Failed plans make the policy fall back to `smart` for that replan, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable

from drivers.core.log import get_logger
from edge.scheduler.plan import Plan, PlanRequest

log = get_logger("scheduler.solver")

READY = b'{"ready": true}'  # the child's first line, once its libraries are loaded


class ProcessPlanner:
    """`Planner` whose solves run in a child process; `run()` is a task of the scheduler
    service. `submit`/`poll` never block."""

    def __init__(
        self,
        *,
        command: list[str] | None = None,
        reply_timeout_s: float = 10.0,
        start_timeout_s: float = 60.0,
        restart_delay_s: float = 1.0,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self.command = command or [sys.executable, "-m", "edge.scheduler.solver"]
        self.reply_timeout_s = reply_timeout_s
        self.start_timeout_s = start_timeout_s
        self.restart_delay_s = restart_delay_s
        self.on_result = on_result
        self._pending: PlanRequest | None = None
        self._done: Plan | None = None
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.solve_s: list[float] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def submit(self, req: PlanRequest) -> None:
        self._pending = req  # a newer question replaces one not yet sent
        self._wake.set()

    def poll(self) -> Plan | None:
        done, self._done = self._done, None
        return done

    def _answer(self, plan: Plan) -> None:
        self._done = plan
        self.solve_s.append(plan.solve_s)
        if self.on_result is not None:
            self.on_result()

    async def _start(self) -> asyncio.subprocess.Process | None:
        """A child that has said it is ready, or None (it died or took too long: killed)."""
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._proc = proc
        self.starts += 1
        assert proc.stdout is not None
        wall0 = time.monotonic()
        line = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.start_timeout_s):
                line = await proc.stdout.readline()
        if line.strip() != READY:
            log.warning(
                "solver process not ready: restarting it",
                pid=proc.pid,
                answered=line[:80].decode(errors="replace"),
                after_s=round(time.monotonic() - wall0, 1),
            )
            await self._stop()
            return None
        log.info(
            "solver process started",
            pid=proc.pid,
            starts=self.starts,
            ready_s=round(time.monotonic() - wall0, 2),
        )
        return proc

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def run(self) -> None:
        try:
            while True:
                started = self._proc is not None and self._proc.returncode is None
                if not started and await self._start() is None:
                    if self._pending is not None:  # not left waiting on a child that fails
                        req, self._pending = self._pending, None
                        self._answer(Plan.failed(req, "solver_died"))
                    await asyncio.sleep(self.restart_delay_s)
                    continue
                assert self._proc is not None
                if self._pending is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                req, self._pending = self._pending, None
                proc = self._proc
                assert proc.stdin is not None and proc.stdout is not None
                wall0 = time.monotonic()
                try:
                    proc.stdin.write(req.to_json().encode() + b"\n")
                    await proc.stdin.drain()
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a cancel
                    # that arrives with the answer, and this task would then never stop.
                    async with asyncio.timeout(self.reply_timeout_s):
                        line = await proc.stdout.readline()
                except TimeoutError:
                    log.warning("solver did not answer in time: restarting it", seq=req.seq)
                    await self._stop()
                    self._answer(Plan.failed(req, "timeout", time.monotonic() - wall0))
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    line = b""
                if not line:
                    log.warning("solver process died: restarting it", seq=req.seq)
                    await self._stop()
                    self._answer(Plan.failed(req, "solver_died", time.monotonic() - wall0))
                    await asyncio.sleep(self.restart_delay_s)
                    continue
                try:
                    plan = Plan.from_json(line.decode())
                except (ValueError, TypeError, KeyError) as e:
                    plan = Plan.failed(req, f"error: bad answer {e!r}")
                self._answer(plan)
        finally:
            await self._stop()


def main() -> None:
    """The child: JSON lines in on stdin, JSON lines out on the original stdout. Anything a
    library prints goes to stderr (fd 1 is pointed there), never into the protocol."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import highspy  # noqa: F401 - loaded before the first question, not during it
    import numpy  # noqa: F401

    from edge.scheduler.mpc import solve

    proto.write(READY.decode() + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = PlanRequest.from_json(line)
        except (ValueError, TypeError, KeyError) as e:
            print(f"solver: bad request {e!r}", file=sys.stderr)
            continue
        try:
            plan = solve(req)
        except Exception as e:  # noqa: BLE001 - answer with the failure, keep serving
            plan = Plan.failed(req, f"error: {e!r}")
        proto.write(plan.to_json() + "\n")


if __name__ == "__main__":
    main()
