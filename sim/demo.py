"""`swapd demo`: a whole station in one process, on a fresh machine with nothing else installed.

Broker (embedded amqtt by default), the simulated world (sim.world), the daemon
(edge.app.station.build_station with the system clock), vehicles asking for swaps in-process, the
fault listener (so `swapd sim fault` reaches the simulators), and either the live view or, with
`--headless`, a run of `--duration` wall seconds ending with one JSON summary line on stdout.

The daemon runs on a private copy of the config (sim.benchcfg): free loopback ports,
virtual CAN buses, the chosen broker (MQTT 3.1.1 for the embedded one), state in a temporary
directory unless `--state-dir` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from drivers.core.clock import Clock, ScaledClock, SystemClock
from drivers.core.log import get_logger
from edge.app.station import Station, build_station
from edge.command_types import SIM, Rejected
from edge.config import StationConfig, load_config
from edge.scheduler.core import SchedulerError
from edge.scheduler.scenario import Scenario, load_scenario
from sim.benchcfg import bench_config
from sim.broker import BrokerAddress, open_broker
from sim.faults import FaultListener, fault_menu
from sim.view import ViewModel, follow_station, run_view
from sim.world import SimWorld, in_process_requester

_log = get_logger("sim.demo")

NON_TTY_DURATION_S = 60.0


@dataclass(slots=True)
class DemoOptions:
    config: Path
    headless: bool = False
    duration_s: float | None = None
    speed: float | None = None
    broker: str = "embedded"
    scenario: Path | None = None
    state_dir: Path | None = None
    seed: int | None = None


class ScenarioPlayer:
    """Replays a scheduler scenario: its hourly arrivals drive the vehicles (the scenario day
    starts at 00:00 when the demo starts, sim time = wall time x speed) and its events act at
    their times: dispatch limits through the scheduler, derates on slots, faults silence the
    slot's charger simulator until the event ends."""

    def __init__(
        self,
        scenario: Scenario,
        station: Station,
        world: SimWorld,
        speed: float,
        clock: Clock | None = None,
    ):
        self.clock = clock
        self.scenario = scenario
        self.station = station
        self.world = world
        self.speed = speed
        self.t0 = time.monotonic()
        self.applied: list[str] = []

    def sim_s(self) -> float:
        return (time.monotonic() - self.t0) * self.speed

    def rate_per_hour(self) -> float:
        hour = int(self.sim_s() // 3600) % 24
        return float(self.scenario.arrivals.swaps_per_hour[hour])

    async def run(self) -> None:
        from datetime import UTC, datetime, timedelta

        slot_ids = [s.id for s in self.world.cfg.slots]
        pending = sorted(self.scenario.events, key=lambda e: e.start_s)
        for ev in pending:
            await asyncio.sleep(max(0.0, (ev.start_s - self.sim_s()) / self.speed))
            wall_s = (ev.end_s - ev.start_s) / self.speed
            label = f"{ev.kind}@{ev.at}-{ev.until}"
            try:
                if ev.kind == "dispatch_limit" and ev.power_kw is not None:
                    # valid_until in the scheduler's (world) time when it has one
                    now = self.clock.now() if self.clock is not None else datetime.now(UTC)
                    scale = self.speed if self.clock is not None else 1.0
                    until = now + timedelta(seconds=wall_s * scale)
                    await self.station.command_service.execute(
                        "set_power_limit",
                        {"power_kw": ev.power_kw, "valid_until": until.isoformat()},
                        SIM,
                    )
                elif ev.kind == "derate" and ev.factor is not None:
                    which = ev.slots if isinstance(ev.slots, list) else range(len(slot_ids))
                    targets = [slot_ids[i % len(slot_ids)] for i in which]
                    for sid in targets:
                        self.station.slots[sid].set_derating(ev.factor)
                    self._later(wall_s, self._underate, targets)
                elif ev.kind == "fault" and ev.slot is not None:
                    slot = self.world.cfg.slots[ev.slot % len(slot_ids)]
                    sim = self.world.chargers[slot.charger]
                    sim.apply_fault("silent", True)
                    self._later(wall_s, sim.apply_fault, "silent", False)
                else:
                    _log.info("scenario event not simulated", item=label)
                    continue
            except (Rejected, SchedulerError, ValueError, KeyError) as e:  # must not end the demo
                _log.warning("scenario event failed", item=label, error=str(e))
                continue
            self.applied.append(label)
            _log.info("scenario event applied", item=label)
        await asyncio.Event().wait()

    def _underate(self, slot_ids: list[str]) -> None:
        for sid in slot_ids:
            self.station.slots[sid].set_derating(1.0)

    def _later(self, delay_s: float, fn: Any, *args: Any) -> None:
        asyncio.get_running_loop().call_later(delay_s, fn, *args)


def _summary(
    station: Station, world: SimWorld, model: ViewModel, duration_s: float, charging: int
) -> dict[str, Any]:
    seen = model.summary()
    t = station.telemetry  # stats() reads the outbox, closed once the station stopped
    return {
        "swaps_completed": seen["swaps_completed"],
        "swaps_failed": seen["swaps_failed"],
        "events_published": t.events_published,
        "telemetry_published": t.telemetry_published,
        "events_received": sum(seen["events"].values()),
        "alarms_raised": seen["events"].get("alarm.raised", 0),
        "duration_s": round(duration_s, 1),
        "speed": world.speed,
        "packs_charging": charging,
        "energy_kwh": world.summary()["sim_energy_kwh"],
        "events": seen["events"],
        "active_alarms": seen["active_alarms"],
        "messages": seen["messages"],
        "world": world.summary(),
    }


async def demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns the summary (headless) or the view's final summary."""
    src = load_config(opts.config)
    speed = opts.speed if opts.speed is not None else src.sim.speed
    scenario = load_scenario(opts.scenario) if opts.scenario is not None else None
    with contextlib.ExitStack() as files:
        tmp = Path(files.enter_context(tempfile.TemporaryDirectory(prefix="swapd-demo-")))
        async with open_broker(opts.broker) as broker:
            path = bench_config(
                opts.config,
                tmp,
                bus="virtual",
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                mqtt_protocol="3.1.1" if opts.broker == "embedded" else None,
                state_dir=opts.state_dir,
            )
            cfg = load_config(path)
            return await _run(cfg, broker, speed, opts, scenario)


def _scenario_start(cfg: StationConfig) -> datetime:
    """Today's local midnight in the grid's timezone: a scenario day starts at 00:00."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(cfg.grid.timezone)
    local = datetime.now(tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


async def _run(
    cfg: StationConfig,
    broker: BrokerAddress,
    speed: float,
    opts: DemoOptions,
    scenario: Scenario | None,
) -> dict[str, Any]:
    root = f"{cfg.mqtt.prefix}/{cfg.station.id}"
    # For a second terminal: faults reach the demo's simulators through this broker.
    print(
        f"swapd demo: broker {broker.url} (root {root}); inject a fault from another terminal with\n"
        f"  swapd sim fault --config {opts.config} --broker {broker.url} ch03 silent   (--clear to end it)",
        file=sys.stderr,
    )
    world = SimWorld.from_config(cfg, speed=speed, seed=opts.seed)
    # The scheduler plans on the world's clock (a scenario day starts at local midnight);
    # protocol timers stay on the system clock.
    sched_clock = ScaledClock(speed, _scenario_start(cfg) if scenario is not None else None)
    station = build_station(cfg, SystemClock(), scheduler_clock=sched_clock)
    model = ViewModel(root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    player: ScenarioPlayer | None = None
    rate = None
    if scenario is not None:
        player = ScenarioPlayer(scenario, station, world, speed, sched_clock)
        rate = player.rate_per_hour
        world.arrival_soc = (scenario.arrivals.soc.mean_pct, scenario.arrivals.soc.std_pct)
    started = time.monotonic()
    charging = 0
    try:
        async with (
            world.running(in_process_requester(station.command_service), rate_per_hour=rate),
            asyncio.TaskGroup() as tg,
        ):
            aux: list[asyncio.Task[Any]] = []
            station_task = tg.create_task(station.run(), name="demo-station")
            followed = asyncio.Event()
            if opts.headless:
                aux.append(
                    tg.create_task(
                        follow_station(broker, root, model, ready=followed),
                        name="demo-follow",
                    )
                )
            listener = FaultListener(broker, root, world.devices())
            aux.append(tg.create_task(listener.run(), name="demo-faults"))
            if player is not None:
                aux.append(tg.create_task(player.run(), name="demo-scenario"))
            if opts.headless:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(opts.duration_s):
                        await stop.wait()
            else:
                view = tg.create_task(
                    run_view(
                        broker,
                        root,
                        model=model,
                        stop=stop,
                        fault_devices=fault_menu(
                            [c.id for c in cfg.chargers], [s.id for s in cfg.slots]
                        ),
                    ),
                    name="demo-view",
                )
                await view
            # Let the last events reach the subscriber, then stop the daemon first.
            await asyncio.sleep(0.5)
            charging = sum(
                1 for seat in world.seats.values() if seat.pack and seat.pack.model.current_a > 1
            )
            station.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(cfg.station.stop_deadline_s + 5):
                    await asyncio.shield(station_task)
            for t in aux:
                t.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    out = _summary(station, world, model, time.monotonic() - started, charging)
    if player is not None:
        out["scenario_events_applied"] = player.applied
    return out


def run_demo(opts: DemoOptions) -> int:
    """The `swapd demo` entry point. Exit 0; 2 for a bad config or scenario."""
    from drivers.core.datafile import DataFileError
    from edge.app.logs import configure_logging

    configure_logging()
    if not opts.headless and not sys.stdout.isatty():
        # A pipe or CI: no screen to draw on, so run headless for a bounded time.
        opts.headless = True
        if opts.duration_s is None:
            opts.duration_s = NON_TTY_DURATION_S
        print(
            f"swapd demo: stdout is not a terminal; headless for {opts.duration_s:g} s",
            file=sys.stderr,
        )
    if opts.headless and opts.duration_s is None:
        opts.duration_s = NON_TTY_DURATION_S
    try:
        summary = asyncio.run(demo(opts))
    except DataFileError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    if opts.headless:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        sys.stdout.flush()
    return 0
