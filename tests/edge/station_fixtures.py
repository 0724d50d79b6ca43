"""A small station (N slots on virtual CAN buses, chargers on free loopback ports, the robot PLC
simulator) built from a real config file, for integration tests of the composed daemon."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.can.config import CanBusConfig
from drivers.core.clock import SystemClock
from edge.app.station import Station, build_station
from edge.config import StationConfig, load_config
from sim.devices.charger import ChargerSim, run_charger_sims, spec_from_endpoint
from sim.devices.pack import BmsCore, BmsPhase, PackModel, PackSpec, SimPack
from sim.devices.robot_plc import RobotPlcSim
from sim.ports import LoopbackPorts

ROOT = Path(__file__).resolve().parents[2]


def mini_config(
    tmp_path: Path, n_slots: int = 2, mqtt_port: int | None = None, extra: str = ""
) -> Path:
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    full = (ROOT / "config" / "station.yaml").read_text()
    # naive: every docked pack charges whatever the hour, so slot-control tests do not depend on
    # the tariff period the test happens to run in.
    grid = full[full.index("grid:\n") : full.index("chargers:")].replace(
        "policy: smart", "policy: naive"
    )
    tag = tmp_path.name[-20:].replace("[", "").replace("]", "")
    ports = LoopbackPorts()  # all distinct, unlike repeated free_port() calls
    chargers = "\n".join(
        f"  - {{id: ch{i:02d}, host: 127.0.0.1, port: {ports.take()}, unit_id: 1, map: builtin:charger-generic}}"
        for i in range(1, n_slots + 1)
    )
    slots = "\n".join(
        f"  - {{id: s{i:02d}, charger: ch{i:02d}, bus: {{interface: virtual, channel: '{tag}-s{i:02d}'}}}}"
        for i in range(1, n_slots + 1)
    )
    robot_port = ports.take()
    ports.close()
    text = f"""version: 2
station:
  id: it-station
  state_dir: {tmp_path / "state"}
  ctl_socket: {tmp_path / "ctl.sock"}
  stop_deadline_s: 3
mqtt:
  enabled: {"true" if mqtt_port else "false"}
  host: 127.0.0.1
  port: {mqtt_port or 1}
  protocol: "5"
{grid}chargers:
{chargers}
slots:
{slots}
robot: {{host: 127.0.0.1, port: {robot_port}, unit_id: 1, map: builtin:robot-plc}}
{extra}"""
    path = cfg_dir / "station.yaml"
    path.write_text(text)
    return path


class PackLoad:
    """A simulated pack as the charger simulator's load (sim.devices.charger.ChargerLoad): the
    charger's output voltage is the pack's, and the current flows only in the BMS's charging
    phase (its contactors)."""

    def __init__(self, model: PackModel) -> None:
        self.model = model
        self.core: BmsCore | None = None

    def pack_voltage_v(self) -> float:
        self.model.current_a = 0.0  # no current unless absorb() follows in this step
        return self.model.voltage_v

    def max_current_a(self) -> float:
        if self.core is None or self.core.phase is not BmsPhase.CHARGING:
            return 0.0
        return self.model.max_current_a

    def absorb(self, current_a: float, dt_s: float) -> None:
        self.model.apply_current(current_a, dt_s / self.model.speed)


@dataclass
class World:
    config: StationConfig
    station: Station
    chargers: dict[str, ChargerSim]
    packs: dict[str, SimPack]
    plc: RobotPlcSim


@contextlib.asynccontextmanager
async def running_station(
    path: Path,
    *,
    soc_pct: float = 40.0,
    speed: float = 50.0,
    docked: set[str] | None = None,
    pack_model: Callable[[PackSpec, float], PackModel] = PackModel,
    pack_spec: Callable[[int], PackSpec] | None = None,
    coupled: bool = False,
    charger_sims: bool = True,
) -> AsyncIterator[World]:
    """`coupled`: each charger simulator drives its slot's pack model (same voltage, the pack
    takes the charger's current); otherwise the pack integrates the CCS current.
    `charger_sims=False`: the test serves the chargers' addresses itself (conformance peers)."""
    cfg = load_config(path)
    models: dict[str, PackModel] = {}
    for i, s in enumerate(cfg.slots):
        if docked is None or s.id in docked:
            spec = (
                pack_spec(i)
                if pack_spec is not None
                else PackSpec(soc_pct=soc_pct, serial=1000 + i)
            )
            models[s.id] = pack_model(spec, speed)
    loads = {s.charger: PackLoad(models[s.id]) for s in cfg.slots if coupled and s.id in models}
    specs = [spec_from_endpoint(c, path.parent, load=loads.get(c.id)) for c in cfg.chargers]
    plc = RobotPlcSim(
        speed=speed, slots=len(cfg.slots), occupied_slots=set(range(1, len(cfg.slots) + 1))
    )
    await plc.start(cfg.robot.host, cfg.robot.port)
    packs: dict[str, SimPack] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        sims = (
            run_charger_sims(specs, speed=speed)
            if charger_sims
            else contextlib.nullcontext(dict[str, ChargerSim]())
        )
        async with sims as chargers:
            for i, s in enumerate(cfg.slots):
                if s.id not in models:
                    continue
                load = loads.get(s.charger)
                core = BmsCore(models[s.id], seed=i + 1, current_from_ccs=load is None)
                if load is not None:
                    load.core = core
                pack = SimPack.on_bus(
                    f"pack-{s.id}", core, CanBusConfig(interface="virtual", channel=s.bus.channel)
                )
                packs[s.id] = pack
                tasks.append(asyncio.create_task(pack.run(), name=f"sim-pack-{s.id}"))
            station = build_station(cfg, SystemClock())
            run = asyncio.create_task(station.run(), name="station")
            try:
                yield World(cfg, station, chargers, packs, plc)
            finally:
                station.stop()
                async with asyncio.timeout(15):
                    await run
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await plc.stop()


async def wait_for(cond: object, timeout_s: float = 20.0, step_s: float = 0.05) -> None:
    """Poll a condition of real I/O (the daemon runs on the system clock) within a bound."""
    assert callable(cond)
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(step_s)
