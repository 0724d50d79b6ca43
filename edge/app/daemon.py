"""`swapd run`: load the config, build the station, run it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from drivers.core.clock import SystemClock
from drivers.core.datafile import DataFileError
from drivers.core.log import get_logger
from edge.app.logs import configure_logging
from edge.app.station import build_station
from edge.app.supervisor import CoreServiceFailed
from edge.config import load_config
from edge.statefiles import StateFileError


def run_daemon(config_path: str) -> int:
    configure_logging()
    log = get_logger("daemon")
    try:
        config = load_config(config_path)
    except DataFileError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(config_path, config))
    except StateFileError as e:
        # One line, the file and the way out; exit 2 so systemd does not restart-loop on it.
        print(f"swapd: {e}", file=sys.stderr)
        return 2
    except CoreServiceFailed as e:
        log.critical("daemon stopped by a core service failure", error=str(e))
        return 1
    log.info("daemon stopped")
    return 0


async def _main(config_path: str, config: object) -> None:
    from edge.config import StationConfig

    assert isinstance(config, StationConfig)
    log = get_logger("daemon")
    station = build_station(config, SystemClock())
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
