"""`swapd sim --config PATH`: run every registered simulator until SIGTERM/SIGINT.

A simulator factory takes the station config and the speed factor and returns an async context
manager: entering it starts the simulators it owns (on the addresses the config names), its value
maps device ids to their `FaultInjectable`s, leaving it stops them. The runner enters every
factory in order, leaves them in reverse, and runs one `FaultListener` over all the devices so
`swapd sim fault` reaches them. The factories are appended to `SIM_FACTORIES` by the composition
(the lead wires the charger, pack and robot simulators in); tests pass their own list.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

import orjson

from drivers.core.log import get_logger
from edge.app.logs import configure_logging
from edge.config import StationConfig
from sim.faults import FaultInjectable, FaultListener, StationMqtt, station_mqtt

SimFactory = Callable[
    [StationConfig, float], AbstractAsyncContextManager[Mapping[str, FaultInjectable]]
]

SIM_FACTORIES: list[SimFactory] = []


def _register_world() -> None:
    from sim.world import sim_factory

    SIM_FACTORIES.append(sim_factory)


_log = get_logger("sim.runner")


class SimSetupError(Exception):
    """Two factories claimed the same device id, or a factory failed to start."""


async def serve_sims(
    cfg: StationConfig,
    speed: float,
    stop: asyncio.Event,
    factories: Sequence[SimFactory] | None = None,
    mqtt: StationMqtt | None = None,
    started: asyncio.Event | None = None,
) -> dict[str, FaultInjectable]:
    """Start the simulators, listen for faults, return (after stopping them) once `stop` is set.

    `started` is set once every factory has started its simulators.

    Returns the devices that ran, by id. Fault injection is skipped when the config disables
    MQTT and no `mqtt` target is given.
    """
    devices: dict[str, FaultInjectable] = {}
    target = mqtt or (station_mqtt(cfg) if cfg.mqtt.enabled else None)
    async with contextlib.AsyncExitStack() as stack:
        for factory in SIM_FACTORIES if factories is None else factories:
            got = await stack.enter_async_context(factory(cfg, speed))
            clash = devices.keys() & got.keys()
            if clash:
                raise SimSetupError(f"device ids started twice: {sorted(clash)}")
            devices.update(got)
        _log.info("simulators running", devices=sorted(devices), speed=speed)
        if started is not None:
            started.set()
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[None]] = []
            if target is not None:
                listener = FaultListener(target.broker, target.root, devices, target.credentials)
                tasks.append(tg.create_task(listener.run(), name="sim-fault-listener"))
            await stop.wait()
            for t in tasks:
                t.cancel()
    _log.info("simulators stopped")
    return devices


def run_sims(config_path: str, speed: float | None = None) -> int:
    """The `swapd sim --config PATH [--speed X]` entry point: exit 0 after SIGTERM/SIGINT, 2 on a
    bad config."""
    from sim.cli import load_or_report

    configure_logging()
    if not SIM_FACTORIES:
        _register_world()
    cfg = load_or_report(config_path)
    if cfg is None:
        return 2
    try:
        asyncio.run(_main(cfg, cfg.sim.speed if speed is None else speed))
    except SimSetupError as e:
        _log.error("simulators could not start", error=str(e))
        return 1
    return 0


async def _main(cfg: StationConfig, speed: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        line = {"ready": True, "station": cfg.station.id, "speed": speed}
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()

    ready = asyncio.create_task(announce(), name="sim-ready")
    try:
        await serve_sims(cfg, speed, stop, started=started)
    finally:
        ready.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
