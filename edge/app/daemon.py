"""`swapd run`: load the config, build the station, run it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import faulthandler
import fcntl
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from drivers.core.clock import ScaledClock, SystemClock
from drivers.core.datafile import DataFileError
from drivers.core.log import get_logger
from edge.app.logs import configure_logging
from edge.app.perf import PERF_ENV, PerfProbe, watch_modbus
from edge.app.runtime import loop_factory, loop_name, tune_gc
from edge.app.station import build_station
from edge.app.supervisor import CoreServiceFailed
from edge.config import load_config
from edge.operator.signatures import KeyLoadError
from edge.statefiles import StateFileError


def run_daemon(config_path: str, sim_speed: float | None = None) -> int:
    configure_logging()
    log = get_logger("daemon")
    # `kill -USR2 PID` writes every thread's stack to stderr (the journal): what a daemon that
    # does not stop or answer is waiting for, without stopping it. Registered before the loop
    # runs, so a start that hangs (config, state files, the lock) can be asked too.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    try:
        config = load_config(config_path)
    except DataFileError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    try:
        lock = lock_state_dir(config.station.state_dir)
    except StationLocked as e:
        print(f"swapd run: {e}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_main(config_path, config, sim_speed))
    except StateFileError as e:
        # One line, the file and the way out; exit 2 so systemd does not restart-loop on it.
        print(f"swapd: {e}", file=sys.stderr)
        return 2
    except CoreServiceFailed as e:
        log.critical("daemon stopped by a core service failure", error=str(e))
        return 1
    except KeyLoadError as e:  # a command-signing key named in the config
        print(f"swapd run: {e}", file=sys.stderr)
        return 2
    finally:
        lock.close()  # the kernel drops the lock with the descriptor (also on a crash)
    log.info("daemon stopped")
    return 0


LOCK_NAME = "swapd.lock"


class StationLocked(RuntimeError):
    pass


def lock_state_dir(state_dir: Path) -> TextIO:
    """One daemon per station: an exclusive, non-blocking flock on `<state_dir>/swapd.lock`,
    held for the life of the process, taken before anything else is opened or bound (the ctl
    socket included). The file names the holder's pid for the second one's message."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    f = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held until the daemon ends
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StationLocked(
            f"another swapd (pid {holder}) is running for this station ({path} is locked)"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


async def _main(config_path: str, config: object, sim_speed: float | None = None) -> None:
    from edge.config import StationConfig

    assert isinstance(config, StationConfig)
    log = get_logger("daemon")
    # Against a simulated world running X times faster, the scheduler plans in world time.
    sched_clock = ScaledClock(sim_speed) if sim_speed is not None and sim_speed != 1.0 else None
    station = build_station(config, SystemClock(), scheduler_clock=sched_clock)
    loop = asyncio.get_running_loop()
    # A stop must end: if the process still runs this long after the first signal, every
    # thread's stack goes to stderr (the journal) and it exits 1, before systemd's SIGKILL
    # (TimeoutStopSec=20) would leave no trace of what it waited for.
    forced_exit_s = config.station.stop_deadline_s + 10.0
    armed = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal armed
        log.info("signal received; stopping", signal=sig.name)
        if not armed:  # the first signal sets the deadline; a second one does not move it
            armed = True
            faulthandler.dump_traceback_later(forced_exit_s, exit=True)
            # A loop still turning has its tasks' stacks written first: a hung stop is usually
            # a task awaiting something that never comes, which thread stacks do not show.
            loop.call_later(forced_exit_s - 1.0, dump_tasks, sys.stderr)
        station.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # From here on SIGUSR2 writes the tasks' stacks (before, faulthandler's thread stacks).
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks, sys.stderr)
    probe = _perf_probe(station)
    gc_tuned = tune_gc()  # after the station is built: its object graph is frozen
    log.info(
        "starting",
        config=config_path,
        station=config.station.id,
        loop=loop_name(),
        gc_tuned=gc_tuned,
    )
    try:
        await station.run()
    finally:
        if probe is not None:
            probe.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        station.notifier.close()


def _perf_probe(station: object) -> PerfProbe | None:
    """Bench figures from inside (SWAPD_PERF_OUT=path; off by default)."""
    from edge.app.station import Station

    assert isinstance(station, Station)
    probe = PerfProbe.from_env(PERF_ENV)
    if probe is None:
        return None
    watch_modbus(probe, station.network.devices)
    probe.start()
    return probe


def dump_tasks(file: TextIO) -> None:
    """Every asyncio task with the frames it is suspended in (SIGUSR2, or a stop running late)."""
    tasks = asyncio.all_tasks()
    print(f"{len(tasks)} asyncio tasks:", file=file)
    for t in tasks:
        print(f"- {t.get_name()}: {t.get_coro()!r}", file=file)
        t.print_stack(limit=8, file=file)
    file.flush()
