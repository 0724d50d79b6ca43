"""`swapd run`: load the config, build the station, run it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from drivers.core.clock import ScaledClock, SystemClock
from drivers.core.datafile import DataFileError
from drivers.core.log import get_logger
from edge.app.logs import configure_logging
from edge.app.station import build_station
from edge.app.supervisor import CoreServiceFailed
from edge.config import load_config


def run_daemon(config_path: str, sim_speed: float | None = None) -> int:
    configure_logging()
    log = get_logger("daemon")
    try:
        config = load_config(config_path)
    except DataFileError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(config_path, config, sim_speed))
    except CoreServiceFailed as e:
        log.critical("daemon stopped by a core service failure", error=str(e))
        return 1
    log.info("daemon stopped")
    return 0


async def _main(config_path: str, config: object, sim_speed: float | None = None) -> None:
    from edge.config import StationConfig

    assert isinstance(config, StationConfig)
    log = get_logger("daemon")
    # Against a simulated world running X times faster, the scheduler plans in world time.
    sched_clock = ScaledClock(sim_speed) if sim_speed is not None and sim_speed != 1.0 else None
    station = build_station(config, SystemClock(), scheduler_clock=sched_clock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, station, sig)
    log.info("starting", config=config_path, station=config.station.id)
    try:
        await station.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        station.notifier.close()


def _on_signal(station: object, sig: signal.Signals) -> None:
    from edge.app.station import Station

    assert isinstance(station, Station)
    get_logger("daemon").info("signal received; stopping", signal=sig.name)
    station.stop()
