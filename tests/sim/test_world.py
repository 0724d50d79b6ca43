"""The simulated world against the real daemon: in one process, as `swapd demo`, and as the
two-process bench (`swapd sim` + `swapd run`), with a fault injected through `swapd sim fault`.

Everything runs on real transports (Modbus TCP, python-can virtual buses or SLCAN over TCP, a
real broker) at speed 20, where the swap's critical path is about 7 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from drivers.core.clock import SystemClock
from edge.app.station import build_station
from edge.config import load_config
from sim.benchcfg import bench_config
from sim.world import SimWorld, SwapRefused, in_process_requester
from tests.conftest import Broker
from tests.edge.foundation_helpers import station_copy

SPEED = 20.0
ROOT = "swapstation/v1/demo-01"


async def _events(
    broker: Broker, into: list[tuple[str, dict[str, Any]]], ready: asyncio.Event, topic: str
) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for msg in client.messages:
            payload = orjson.loads(bytes(msg.payload))  # type: ignore[arg-type]
            into.append((str(msg.topic), payload))


async def _wait_for(pred: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.1)


def _event_of(events: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [p for t, p in events if t == f"{ROOT}/event/{kind.replace('.', '/')}"]


def _details(p: dict[str, Any]) -> dict[str, Any]:
    d = p.get("details")
    return d if isinstance(d, dict) else p


@pytest.mark.timeout(90)
async def test_in_process_swap_stores_the_depleted_pack_which_then_charges(
    mosquitto: Broker, tmp_path: Path
) -> None:
    path = bench_config(
        station_copy(tmp_path), tmp_path / "bench", mqtt_port=mosquitto.port, bus="virtual"
    )
    cfg = load_config(path)
    world = SimWorld.from_config(cfg, speed=SPEED, seed=3)
    station = build_station(cfg, SystemClock())
    events: list[tuple[str, dict[str, Any]]] = []
    subscribed = asyncio.Event()
    sub = asyncio.create_task(_events(mosquitto, events, subscribed, f"{ROOT}/event/#"))
    await asyncio.wait_for(subscribed.wait(), 10)
    request = in_process_requester(station.command_service)
    async with world.running(request, arrivals=False):
        run = asyncio.create_task(station.run(), name="test-station")
        try:
            # Start-up: every seated pack identified (probe), the empty slot found empty.
            seated = list(world.initial)
            await _wait_for(lambda: all(station.slots[s].snapshot().pack_id for s in seated), 30)
            assert world.flow is not None
            vehicle = world.flow.arrive()
            await _wait_for(lambda: world.stats.vehicles_served == 1, 45)
            done = _event_of(events, "swap.completed")
            await _wait_for(lambda: _event_of(events, "swap.completed"), 5)
            done = _event_of(events, "swap.completed")
            assert not _event_of(events, "swap.failed")
            # The depleted pack is in a rack slot, identified by its BRM, and charging.
            where = [s for s, seat in world.seats.items() if seat.pack is not None]
            store = next(
                s
                for s in where
                if world.seats[s].pack.pack_id == vehicle.pack_id  # type: ignore[union-attr]
            )
            await _wait_for(lambda: station.slots[store].snapshot().pack_id == vehicle.pack_id, 10)
            assert station.slots[store].pack_type() == vehicle.pack_type
            await _wait_for(
                lambda: any(
                    _details(p).get("slot_id") == store
                    and _details(p).get("pack_id") == vehicle.pack_id
                    for p in _event_of(events, "charge.started")
                ),
                20,
            )
            inv = station.swap.coordinator.status()["inventory"]
            assert vehicle.pack_id in str(inv)
            # Rack work ran in parallel with the vehicle side: a rack step started while a
            # vehicle step was still running.
            units = [m.unit for m in world.plc.motions]
            assert units.index("rack") < len(units) - 1 - units[::-1].index("vehicle")
            assert units.index("vehicle") < len(units) - 1 - units[::-1].index("rack")
            assert done
        finally:
            station.stop()
            await asyncio.wait_for(run, 20)
    sub.cancel()
    await asyncio.gather(sub, return_exceptions=True)


async def test_refused_swap_raises_swap_refused(mosquitto: Broker, tmp_path: Path) -> None:
    """Before any pack is identified the station refuses; the requester says so."""
    path = bench_config(station_copy(tmp_path), tmp_path / "b", mqtt_port=mosquitto.port)
    cfg = load_config(path)
    station = build_station(cfg, SystemClock())
    request = in_process_requester(station.command_service)
    with pytest.raises(SwapRefused):
        await request({"vehicle_id": "V1", "pack_type": "LFP", "announced_pack_id": "X-1"})
    station.swap.close()
    station.telemetry.close()


@pytest.mark.timeout(90)
def test_swapd_demo_headless_completes_swaps_without_failures() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "demo",
            "--headless",
            "--duration",
            "40",
            "--speed",
            "20",
        ],
        capture_output=True,
        timeout=85,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    last = proc.stdout.decode().strip().splitlines()[-1]
    summary = orjson.loads(last)
    assert summary["swaps_completed"] >= 1, summary
    assert summary["swaps_failed"] == 0, summary
    for key in ("events_published", "alarms_raised", "duration_s"):
        assert key in summary


@pytest.fixture
def two_process_config(mosquitto: Broker, tmp_path: Path) -> Path:
    return bench_config(
        station_copy(tmp_path), tmp_path / "bench", bus="slcan", mqtt_port=mosquitto.port
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


def _swapd(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "edge", *args], stdout=subprocess.PIPE, stderr=err, env=env
        )


@pytest.fixture
async def event_feed(mosquitto: Broker) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    ready = asyncio.Event()
    task = asyncio.create_task(_events(mosquitto, events, ready, f"{ROOT}/#"))
    await asyncio.wait_for(ready.wait(), 10)
    yield events
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.timeout(90)
async def test_two_processes_sim_and_run_complete_a_swap_and_report_a_fault(
    two_process_config: Path,
    procs: list[subprocess.Popen[bytes]],
    event_feed: list[tuple[str, dict[str, Any]]],
    tmp_path: Path,
) -> None:
    cfg = str(two_process_config)
    sim = _swapd("sim", "--config", cfg, "--speed", "20", log=tmp_path / "sim.log")
    procs.append(sim)
    assert sim.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 30)
    assert orjson.loads(line)["ready"] is True
    procs.append(_swapd("run", "--config", cfg, log=tmp_path / "run.log"))

    def logs() -> str:
        told = [f"{t} {orjson.dumps(p).decode()[:300]}" for t, p in event_feed if "/event/" in t]
        return (
            "".join(
                f"--- {n}\n" + (tmp_path / n).read_text()[-2500:] for n in ("sim.log", "run.log")
            )
            + "--- events over MQTT\n"
            + "\n".join(told[-40:])
        )

    try:
        await _wait_for(lambda: _event_of(event_feed, "swap.completed"), 70)
    except TimeoutError:
        pytest.fail(f"no swap.completed over MQTT\n{logs()}")
    assert not _event_of(event_feed, "swap.failed"), logs()

    # (d) a fault injected with `swapd sim fault` shows up as an alarm.
    fault = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edge", "sim", "fault", "--config", cfg, "ch03", "silent"],
        capture_output=True,
        timeout=30,
    )
    assert fault.returncode == 0, fault.stderr.decode()
    try:
        await _wait_for(
            lambda: any(
                (_details(p).get("code"), _details(p).get("source"))
                in {("modbus.offline", "ch03"), ("charger.offline", "s03")}
                for p in _event_of(event_feed, "alarm.raised")
            ),
            20,
        )
    except TimeoutError:
        pytest.fail(f"no alarm for ch03\n{_event_of(event_feed, 'alarm.raised')}\n{logs()}")


async def test_robot_moves_carry_packs_between_seats_and_the_seat_is_the_charger_load(
    tmp_path: Path,
) -> None:
    from sim.devices.charger import ChargerPhysics, ChargerRatings
    from sim.devices.pack import BmsPhase
    from sim.devices.robot_plc import PlcPlace, RackSlot
    from sim.world import PackSeat, VehicleFlow

    cfg = load_config(bench_config(station_copy(tmp_path), tmp_path / "b", bus="virtual"))
    world = SimWorld.from_config(cfg, speed=10.0, seed=5)
    for s in cfg.slots:  # buses not started: frames are dropped, which is all this test needs
        world.seats[s.id] = PackSeat(s.id, world._transport(s.id, s.bus))
    for sid, p in world.initial.items():
        world.seats[sid].seat(p)
    first, last = cfg.slots[0].id, cfg.slots[-1].id
    assert world.seats[last].pack is None  # the free slot for the first depleted pack
    full = world.seats[first].pack
    assert full is not None and full.pack_id == "SIMB-00000001" and full.pack_type == "LFP"

    world._on_move(RackSlot(1), "buffer")  # fetch: off the bus and off the charger
    assert world.seats[first].pack is None and world.places["buffer"] is full
    assert world.seats[first].pack_voltage_v() == 0.0
    assert world.seats[first].max_current_a() == 0.0
    with pytest.raises(ValueError, match="holds no pack"):
        world.devices()[f"pack-{first}"].inject("bcl_stops", {})

    async def never(_a: dict[str, str]) -> None:
        raise SwapRefused("not asked in this test")

    v = VehicleFlow(world, never, rate_per_hour=0.0).new_vehicle()
    assert v.announcement()["announced_pack_id"] == v.pack_id
    world.vehicle_at_bay(v)
    n = len(cfg.slots)
    moves: list[tuple[PlcPlace, PlcPlace]] = [
        ("vehicle", "shuttle"),
        ("shuttle", "stacker"),
        ("stacker", RackSlot(n)),
    ]
    for src, dst in moves:
        world._on_move(src, dst)
    seat = world.seats[last]
    assert seat.pack is not None and seat.pack.pack_id == v.pack_id
    assert seat.core is not None and seat.core.phase is BmsPhase.WAIT_CHARGER

    # The charger drives the seated pack: no current before the BMS's charging phase.
    physics = ChargerPhysics(ratings=ChargerRatings(750.0, 250.0, 60.0), load=seat)
    physics.enabled, physics.voltage_setpoint_v, physics.current_limit_a = True, 420.0, 100.0
    soc0 = seat.pack.model.soc_pct
    physics.step(1.0)
    assert physics.output_current_a == 0.0
    seat.core.phase = BmsPhase.CHARGING
    for _ in range(20):
        physics.step(1.0)
    assert physics.output_current_a > 50.0
    assert seat.pack.model.soc_pct > soc0
    for s in world.seats.values():
        await s.close()


async def test_scenario_player_applies_events_at_their_times_and_drives_arrivals() -> None:
    from types import SimpleNamespace

    from edge.scheduler.scenario import ScenarioEvent, load_scenario
    from sim.demo import ScenarioPlayer

    sc = load_scenario("builtin:grid-emergency-day")
    sc = sc.model_copy(
        update={
            "events": [
                ScenarioEvent(kind="dispatch_limit", at="00:01", until="00:02", power_kw=240),
                ScenarioEvent(kind="derate", at="00:01", until="00:02", factor=0.5, slots=[0]),
                ScenarioEvent(kind="fault", at="00:01", until="00:02", slot=1),
            ]
        }
    )
    calls: list[tuple[Any, ...]] = []

    class Slot:
        def __init__(self, sid: str) -> None:
            self.sid = sid

        def set_derating(self, f: float) -> None:
            calls.append(("derate", self.sid, f))

    class Charger:
        def apply_fault(self, name: str, active: bool = True) -> None:
            calls.append(("charger", name, active))

    class Commands:  # the station's command service: the sim route goes through it
        async def execute(self, name: str, params: dict[str, Any], origin: Any) -> None:
            assert origin.route == "sim"
            calls.append(("limit", params["power_kw"]) if name == "set_power_limit" else (name,))

    slots = [SimpleNamespace(id="s01", charger="ch01"), SimpleNamespace(id="s02", charger="ch02")]
    station = SimpleNamespace(command_service=Commands(), slots={s.id: Slot(s.id) for s in slots})
    world = SimpleNamespace(
        cfg=SimpleNamespace(slots=slots), chargers={"ch01": Charger(), "ch02": Charger()}
    )
    # 3600x: one scenario minute is 1/60 s of wall time.
    player = ScenarioPlayer(sc, station, world, 3600.0)  # type: ignore[arg-type]
    assert player.rate_per_hour() == sc.arrivals.swaps_per_hour[0]
    task = asyncio.create_task(player.run())
    try:
        await _wait_for(lambda: ("charger", "silent", False) in calls, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert ("limit", 240) in calls
    assert ("derate", "s01", 0.5) in calls and ("derate", "s01", 1.0) in calls
    assert ("charger", "silent", True) in calls
    assert len(player.applied) == 3
