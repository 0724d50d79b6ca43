"""The simulated world a station runs against: chargers, packs, the robot PLC and vehicles.

`SimWorld.from_config(cfg, speed=, seed=)` builds, from the station config alone:
- every charger simulator on its config address (Modbus TCP, sim.devices.charger);
- one `PackSeat` per rack slot on that slot's CAN bus (an SLCAN/TCP port for a
  `socket://host:port` channel, a python-can virtual bus for a `virtual` one). A seat holds at
  most one `WorldPack` (a physical pack: PackModel + identity); its BMS answers only while seated,
  and the seat is the load of the slot's charger, so the pack's SOC follows the charger output;
- the robot PLC simulator on the robot address, whose pack moves (`on_move`) carry packs between
  places: fetch takes a pack off its seat, store seats the vehicle's depleted pack;
- vehicles (`VehicleFlow`): Poisson arrivals at the config's hourly swap forecast (x speed), one
  in the bay at a time, each asking the station for a swap through a pluggable `SwapRequester`.

`speed` scales charger/pack physics, robot step times and arrivals; protocol timers stay real.
`devices()` gives the FaultInjectable registry for sim.faults.FaultListener.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from drivers.can.bus import BusOwner
from drivers.can.codec import CanFrame
from drivers.can.config import CanBusConfig
from drivers.can.runner import CoreRunner
from drivers.core.log import get_logger
from drivers.robot.contract import RobotContract, UnitState
from edge.config import StationConfig
from sim.devices.charger import (
    ChargerRatings,
    ChargerSim,
    run_charger_sims,
    spec_from_endpoint,
)
from sim.devices.pack import (
    BmsCore,
    BmsPhase,
    Fault,
    FrameTransport,
    PackModel,
    PackSpec,
)
from sim.devices.robot_plc import PlcPlace, RackSlot, RobotPlcSim
from sim.devices.slcan_server import SlcanPort
from sim.devices.vehicle import SimVehicle
from sim.faults import (
    ChargerInjector,
    FaultInjectable,
    RobotInjector,
    StationMqtt,
    mqtt_client,
)
from sim.loadstats import FrameStats

_log = get_logger("sim.world")

BusMode = Literal["slcan", "virtual"]
MANUFACTURER = "SIMB"
VEHICLE_SERIAL_BASE = 0x10000


class SwapRefused(Exception):
    """The station refused a start_swap (nothing moved)."""


SwapRequester = Callable[[dict[str, str]], Awaitable[None]]


@dataclass
class WorldPack:
    """One physical pack: its model (SOC, temperature) and the identity its BRM sends."""

    serial: int
    chemistry: str
    model: PackModel

    @property
    def pack_id(self) -> str:
        # As the daemon derives it from BRM (drivers.can.events.PackIdentified.pack_id).
        return f"{MANUFACTURER}-{self.serial:08X}"

    @property
    def pack_type(self) -> str:
        # What the daemon decodes from BRM (drivers.can.events.BATTERY_TYPES): the chemistry.
        return self.chemistry

    @classmethod
    def new(
        cls, serial: int, soc_pct: float, speed: float, capacity_kwh: float, chemistry: str = "LFP"
    ) -> WorldPack:
        spec = PackSpec(chemistry=chemistry, soc_pct=soc_pct, manufacturer=MANUFACTURER)
        spec.serial = serial
        spec.capacity_ah = round(capacity_kwh * 1000.0 / spec.rated_voltage_v, 1)
        return cls(serial, chemistry, PackModel(spec, speed=speed))


class PackSeat:
    """A rack slot's connector: its CAN bus (always up, so the daemon's link stays connected)
    and at most one seated pack, whose BMS runs only while seated. It is also the charger's
    load (sim.devices.charger.ChargerLoad)."""

    def __init__(
        self, slot_id: str, transport: SlcanPort | BusOwner, stats: FrameStats | None = None
    ) -> None:
        self.slot_id = slot_id
        self.stats = stats
        self.port = transport
        self.transport: FrameTransport = transport
        self.pack: WorldPack | None = None
        self.core: BmsCore | None = None
        self._runner: CoreRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.transport.set_handler(self._drop)

    @staticmethod
    def _drop(frame: CanFrame) -> None:
        del frame  # no pack seated: frames to it go nowhere

    # ---- pack in and out --------------------------------------------------------------
    def seat(self, pack: WorldPack) -> None:
        if self.pack is not None:
            raise RuntimeError(f"{self.slot_id}: seat already holds {self.pack.pack_id}")
        self.pack = pack
        # A fresh BMS session each time it is plugged in; the charger drives its current.
        self.core = core = BmsCore(pack.model, current_from_ccs=False, seed=pack.serial)
        runner = CoreRunner(core, self.transport.send)
        self._runner = runner
        if self.stats is None:
            self.transport.set_handler(runner.on_frame)
        else:
            self.transport.set_handler(self.stats.wrap(self.slot_id, runner.on_frame))
            self.stats.seated(self.slot_id, lambda: core.counters.timeouts)
        self._task = asyncio.get_running_loop().create_task(
            runner.run(), name=f"sim-bms-{self.slot_id}"
        )
        self._tasks.add(self._task)
        self._task.add_done_callback(self._tasks.discard)

    def unseat(self) -> WorldPack:
        pack = self.pack
        if pack is None:
            raise RuntimeError(f"{self.slot_id}: no pack to take")
        self.transport.set_handler(self._drop)
        if self.stats is not None:
            self.stats.unseated(self.slot_id)
        if self._task is not None:
            self._task.cancel()
        self.pack = self.core = self._runner = self._task = None
        pack.model.apply_current(0.0, 0.0)
        return pack

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- fault injection (sim.faults.FaultInjectable: the pack in this seat) -----------
    def faults(self) -> list[str]:
        return [f.value for f in Fault]

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        f = Fault(fault)  # ValueError for a name the simulated pack does not have
        if self.core is None or self._runner is None:
            raise ValueError(f"slot {self.slot_id} holds no pack")
        self.core.inject(f)
        self._runner.dispatch([])

    def clear(self, fault: str) -> None:
        f = Fault(fault)
        if self.core is not None and self._runner is not None:
            self.core.clear(f)
            self._runner.dispatch([])

    # ---- ChargerLoad ------------------------------------------------------------------
    def pack_voltage_v(self) -> float:
        if self.pack is None:
            return 0.0
        # Read first in every charger physics step: no current unless absorb() follows.
        self.pack.model.current_a = 0.0
        return self.pack.model.voltage_v

    def max_current_a(self) -> float:
        # Contactors are closed only in the BMS's charging phase.
        if self.pack is None or self.core is None or self.core.phase is not BmsPhase.CHARGING:
            return 0.0
        return self.pack.model.max_current_a

    def absorb(self, current_a: float, dt_s: float) -> None:
        if self.pack is not None:
            m = self.pack.model
            m.apply_current(current_a, dt_s / m.speed)  # dt_s is physics time already


@dataclass
class WorldStats:
    vehicles_arrived: int = 0
    swaps_requested: int = 0
    swaps_refused: int = 0
    vehicles_served: int = 0
    vehicles_gave_up: int = 0
    departed_soc_pct: list[float] = field(default_factory=list)


def vehicles_per_hour(cfg: StationConfig, now: datetime | None = None) -> float:
    """The config's forecast for the current local hour (the scheduler's arrival model)."""
    from zoneinfo import ZoneInfo

    forecast = cfg.grid.swap_forecast_per_hour
    if not forecast:
        return 6.0
    t = (now or datetime.now(UTC)).astimezone(ZoneInfo(cfg.grid.timezone))
    return float(forecast[t.hour % len(forecast)])


class VehicleFlow:
    """Vehicles arriving with depleted packs, one in the bay at a time (the rest queue)."""

    def __init__(
        self,
        world: SimWorld,
        requester: SwapRequester,
        *,
        rate_per_hour: float | Callable[[], float],
        first_after_s: float = 1.0,
        swap_timeout_s: float = 600.0,
        retry_s: float = 2.0,
        max_tries: int = 30,
    ) -> None:
        self.world = world
        self.requester = requester
        self._rate = rate_per_hour
        self.first_after_s = first_after_s
        self.swap_timeout_s = swap_timeout_s
        self.retry_s = retry_s
        self.max_tries = max_tries
        self.every_s: float | None = None  # fixed gaps instead of Poisson (the load bench)
        self.queue: asyncio.Queue[SimVehicle] = asyncio.Queue()
        self.current: SimVehicle | None = None
        self._n = 0

    def rate_per_hour(self) -> float:
        return self._rate() if callable(self._rate) else self._rate

    def new_vehicle(self) -> SimVehicle:
        w = self.world
        self._n += 1
        soc = max(5.0, min(60.0, w.rng.gauss(*w.arrival_soc)))
        pack = WorldPack.new(
            VEHICLE_SERIAL_BASE + self._n, round(soc, 1), w.speed, w.capacity_kwh, w.chemistry
        )
        w.vehicle_packs[pack.pack_id] = pack
        return SimVehicle(w.plc, f"TAXI-{self._n:04d}", pack.pack_id, pack.pack_type, soc)

    def arrive(self) -> SimVehicle:
        """One vehicle joins the queue now (scenarios and tests call this directly)."""
        v = self.new_vehicle()
        self.world.stats.vehicles_arrived += 1
        self.queue.put_nowait(v)
        return v

    async def arrivals(self) -> None:
        await asyncio.sleep(self.first_after_s)
        self.arrive()
        while self.every_s is not None:
            await asyncio.sleep(self.every_s / self.world.speed)
            self.arrive()
        while True:
            rate = self.rate_per_hour() * self.world.speed
            gap_s = self.world.rng.expovariate(rate / 3600.0) if rate > 0 else 60.0
            await asyncio.sleep(gap_s)
            if rate > 0:
                self.arrive()

    async def serve(self) -> None:
        while True:
            v = await self.queue.get()
            self.current = v
            try:
                await self._one(v)
            finally:
                self.current = None

    async def _one(self, v: SimVehicle) -> None:
        w = self.world
        w.vehicle_at_bay(v)
        v.arrive()
        for attempt in range(self.max_tries):
            w.stats.swaps_requested += 1
            try:
                await self.requester(v.announcement())
                break
            except SwapRefused as e:
                w.stats.swaps_refused += 1
                _log.info("swap refused", vehicle=v.vehicle_id, reason=str(e), attempt=attempt)
                await asyncio.sleep(self.retry_s)
        else:
            _log.warning("vehicle leaves unserved", vehicle=v.vehicle_id)
            w.stats.vehicles_gave_up += 1
            w.vehicle_leaves(v, forced=True)
            return
        try:
            async with asyncio.timeout(self.swap_timeout_s):
                while not (w.plc.released and w.plc.units["vehicle"].state != UnitState.BUSY):
                    w.plc.changed.clear()
                    w.plc.update()
                    if w.plc.released:
                        continue
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await w.plc.changed.wait()
        except TimeoutError:
            _log.warning("swap did not finish; vehicle leaves", vehicle=v.vehicle_id)
            w.stats.vehicles_gave_up += 1
            w.vehicle_leaves(v, forced=True)
            return
        w.stats.vehicles_served += 1
        w.vehicle_leaves(v, forced=False)


def in_process_requester(service: Any) -> SwapRequester:
    """start_swap through the station's command service (one process): the `sim` route, with
    the same policy, mode rules and interlocks as MQTT."""
    from edge.command_types import SIM, Rejected

    async def request(announcement: dict[str, str]) -> None:
        try:
            await service.execute("start_swap", announcement, SIM)
        except Rejected as e:
            raise SwapRefused(e.message) from None

    return request


def mqtt_requester(target: StationMqtt, timeout_s: float = 15.0) -> SwapRequester:
    """start_swap as the MQTT command `<root>/cmd/start_swap`; waits for its result."""

    async def request(announcement: dict[str, str]) -> None:
        cmd_id = f"sim-{uuid.uuid4().hex[:12]}"
        expires = datetime.now(UTC) + timedelta(seconds=60)
        payload = {
            "cmd_id": cmd_id,
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
            "params": announcement,
        }
        topic = f"{target.root}/cmd/start_swap"
        try:
            async with mqtt_client(target.broker, target.credentials) as client:
                await client.subscribe(f"{topic}/result", qos=1)
                await client.publish(topic, orjson.dumps(payload), qos=1)
                async with asyncio.timeout(timeout_s):
                    async for msg in client.messages:
                        try:
                            res = orjson.loads(bytes(msg.payload))
                        except orjson.JSONDecodeError:
                            continue
                        if not isinstance(res, dict) or res.get("cmd_id") != cmd_id:
                            continue
                        if res.get("ok"):
                            return
                        err = res.get("error") or {}
                        raise SwapRefused(str(err.get("message", "refused")))
        except TimeoutError:
            raise SwapRefused("no answer to start_swap") from None
        except Exception as e:  # aiomqtt.MqttError and friends: retry later like a refusal
            if isinstance(e, SwapRefused):
                raise
            raise SwapRefused(f"broker: {e}") from None

    return request


class SimWorld:
    """Every simulated device of a station config, physically linked. Use `async with
    world.running(): ...` (or `start()`/`stop()`)."""

    def __init__(
        self,
        cfg: StationConfig,
        *,
        speed: float = 1.0,
        seed: int | None = None,
        bus: BusMode | None = None,
        empty_slots: int = 1,
        soc_range_pct: tuple[float, float] = (80.0, 98.0),
        chemistry: str = "LFP",
        full_packs: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.speed = speed
        self.rng = random.Random(cfg.sim.seed if seed is None else seed)
        self.bus_mode = bus
        self.chemistry = chemistry
        self.capacity_kwh = cfg.grid.pack.capacity_kwh
        self.slot_numbers = {s.id: i + 1 for i, s in enumerate(cfg.slots)}
        self.slot_by_number = {n: s for s, n in self.slot_numbers.items()}
        self.stats = WorldStats()
        self.vehicle_packs: dict[str, WorldPack] = {}
        # Where each pack is, by PLC place (`slot:<n>`, `vehicle`, `shuttle`, ...).
        self.places: dict[str, WorldPack] = {}
        self.seats: dict[str, PackSeat] = {}
        self.chargers: dict[str, ChargerSim] = {}
        self.plc = RobotPlcSim(
            RobotContract.load(cfg.robot_map()),
            speed=speed,
            slots=len(cfg.slots),
            device_id=cfg.robot.unit_id,
        )
        self.plc.on_move = self._on_move
        self.flow: VehicleFlow | None = None
        self.frame_stats: FrameStats | None = None  # the load bench's CCS/CST/CEM record
        self.arrival_soc: tuple[float, float] = (25.0, 8.0)  # mean, std (%) of arriving packs
        self._bay_vehicle: SimVehicle | None = None
        # Initial rack: all but the last `empty_slots` slots hold a pack; every third (or the
        # first `full_packs`) is full so a first swap has a pack that has finished charging.
        n_full = max(0, len(cfg.slots) - empty_slots)
        lo, hi = soc_range_pct
        self.initial: dict[str, WorldPack] = {}
        for i, s in enumerate(cfg.slots[:n_full]):
            full = i % 3 == 0 if full_packs is None else i < full_packs
            soc = self.rng.uniform(max(lo, 96.0), max(hi, 97.0)) if full else None
            soc = soc if soc is not None else self.rng.uniform(lo, hi)
            self.initial[s.id] = WorldPack.new(
                i + 1, round(soc, 1), speed, self.capacity_kwh, chemistry
            )
        self.plc.slots.update({self.slot_numbers[s]: True for s in self.initial})

    @classmethod
    def from_config(
        cls,
        cfg: StationConfig,
        *,
        speed: float | None = None,
        seed: int | None = None,
        bus: BusMode | None = None,
        **kw: Any,
    ) -> SimWorld:
        return cls(cfg, speed=cfg.sim.speed if speed is None else speed, seed=seed, bus=bus, **kw)

    # ---- pack moves --------------------------------------------------------------------
    def _on_move(self, src: PlcPlace, dst: PlcPlace) -> None:
        if isinstance(src, RackSlot):
            pack = None
            seat = self.seats[self.slot_by_number[src.number]]
            if seat.pack is not None:
                pack = seat.unseat()
        else:
            pack = self.places.pop(src, None)
        if pack is None:
            _log.warning("robot moved a pack the world does not know", src=src, dst=dst)
            return
        if isinstance(dst, RackSlot):
            slot_id = self.slot_by_number[dst.number]
            self.seats[slot_id].seat(pack)
            _log.info("pack stored", slot=slot_id, pack=pack.pack_id, soc=pack.model.soc_pct)
        else:
            self.places[dst] = pack

    def vehicle_at_bay(self, v: SimVehicle) -> None:
        self._bay_vehicle = v
        self.places["vehicle"] = self.vehicle_packs[v.pack_id]

    def vehicle_leaves(self, v: SimVehicle, *, forced: bool) -> None:
        pack = self.places.pop("vehicle", None)
        if pack is not None and not forced:
            self.stats.departed_soc_pct.append(round(pack.model.soc_pct, 1))
        if forced:
            self.plc.released = True  # a bench shortcut: the vehicle just drives away
        self.plc.vehicle_departs()
        self._bay_vehicle = None

    # ---- registry and summary ----------------------------------------------------------
    def devices(self) -> dict[str, FaultInjectable]:
        out: dict[str, FaultInjectable] = {}
        for cid, sim in self.chargers.items():
            flags = [f for p in sim.map.points.values() for f in (p.bits or {}).values()]
            out[cid] = ChargerInjector(sim, bit_flags=flags)
        for sid, seat in self.seats.items():
            out[f"pack-{sid}"] = seat
        out["robot"] = RobotInjector(self.plc)
        return out

    def summary(self) -> dict[str, Any]:
        soc = {s: round(seat.pack.model.soc_pct, 1) for s, seat in self.seats.items() if seat.pack}
        # Every pack this world made, wherever it is now (vehicles drive off with charged ones).
        packs = [*self.initial.values(), *self.vehicle_packs.values()]
        energy = sum(p.model.energy_in_kwh for p in packs)
        st = self.stats
        return {
            "vehicles_arrived": st.vehicles_arrived,
            "vehicles_served": st.vehicles_served,
            "vehicles_gave_up": st.vehicles_gave_up,
            "swaps_refused": st.swaps_refused,
            "departed_soc_pct": st.departed_soc_pct,
            "rack_soc_pct": soc,
            "sim_energy_kwh": round(energy, 2),
            "vehicles_queued": self.flow.queue.qsize() if self.flow else 0,
        }

    # ---- running -----------------------------------------------------------------------
    def _transport(self, slot_id: str, bus: CanBusConfig) -> SlcanPort | BusOwner:
        mode = self.bus_mode or ("virtual" if bus.interface == "virtual" else "slcan")
        if mode == "virtual":
            if bus.interface != "virtual":
                raise ValueError(f"slot {slot_id}: bus=virtual needs a virtual channel in config")
            return BusOwner(f"sim-pack-{slot_id}", bus)
        if not bus.channel.startswith("socket://"):
            raise ValueError(f"slot {slot_id}: SLCAN simulator needs socket://host:port")
        host, _, port = bus.channel.removeprefix("socket://").rpartition(":")
        return SlcanPort(int(port), host, name=f"slot-{slot_id}")

    @contextlib.asynccontextmanager
    async def running(
        self,
        requester: SwapRequester | None = None,
        *,
        arrivals: bool = True,
        rate_per_hour: float | Callable[[], float] | None = None,
        first_arrival_s: float = 1.0,
    ) -> AsyncIterator[SimWorld]:
        """Start every device (and, with a requester, the vehicles); stop them on exit."""
        cfg = self.cfg
        config_dir = cfg.source.parent if cfg.source is not None else None
        ratings = ChargerRatings(max_voltage_v=750.0, max_current_a=250.0, max_power_kw=60.0)
        for s in cfg.slots:
            self.seats[s.id] = PackSeat(s.id, self._transport(s.id, s.bus), self.frame_stats)
        by_charger = {s.charger: self.seats[s.id] for s in cfg.slots}
        specs = [
            spec_from_endpoint(
                cfg.charger(c.id),
                config_dir or ".",
                ratings=ratings,
                load=by_charger.get(c.id),
            )
            for c in cfg.chargers
        ]
        async with contextlib.AsyncExitStack() as stack:
            self.chargers = await stack.enter_async_context(
                run_charger_sims(specs, speed=self.speed)
            )
            tg = await stack.enter_async_context(asyncio.TaskGroup())
            tasks: list[asyncio.Task[None]] = []
            for sid, seat in self.seats.items():
                tasks.append(tg.create_task(seat.transport.run(), name=f"sim-bus-{sid}"))
            for seat in self.seats.values():
                if isinstance(seat.port, SlcanPort):
                    await seat.port.listening.wait()
            for sid, pack in self.initial.items():
                self.seats[sid].seat(pack)
            await self.plc.start(cfg.robot.host, cfg.robot.port)
            if requester is not None:
                rate = rate_per_hour if rate_per_hour is not None else self._forecast_rate
                self.flow = VehicleFlow(self, requester, rate_per_hour=rate)
                self.flow.first_after_s = first_arrival_s
                tasks.append(tg.create_task(self.flow.serve(), name="sim-vehicles"))
                if arrivals:
                    tasks.append(tg.create_task(self.flow.arrivals(), name="sim-arrivals"))
            _log.info(
                "world running",
                chargers=len(self.chargers),
                packs=len(self.initial),
                speed=self.speed,
            )
            try:
                yield self
            finally:
                for t in tasks:
                    t.cancel()
                await self.plc.stop()
                for seat in self.seats.values():
                    await seat.close()

    def _forecast_rate(self) -> float:
        return vehicles_per_hour(self.cfg)


def sim_factory(
    cfg: StationConfig, speed: float
) -> contextlib.AbstractAsyncContextManager[Mapping[str, FaultInjectable]]:
    """The `swapd sim` factory: the whole world, vehicles asking over MQTT `cmd/start_swap`.

    For the load bench: SWAPD_SIM_STATS=PATH records what the packs receive and the sim's own
    loop lag (edge.app.perf, dumped on SIGUSR1 and at exit); SWAPD_SIM_ARRIVAL_S=S sends a
    vehicle every S seconds (world time) instead of the forecast's Poisson arrivals;
    SWAPD_SIM_SOC=LO,HI,N seats N full packs and the others between LO and HI % (charging)."""
    import os

    from edge.app.perf import SIM_STATS_ENV, PerfProbe
    from sim.faults import station_mqtt

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[Mapping[str, FaultInjectable]]:
        soc = os.environ.get("SWAPD_SIM_SOC")
        if soc:
            lo, hi, full = soc.split(",")
            world = SimWorld.from_config(
                cfg, speed=speed, soc_range_pct=(float(lo), float(hi)), full_packs=int(full)
            )
        else:
            world = SimWorld.from_config(cfg, speed=speed)
        probe = PerfProbe.from_env(SIM_STATS_ENV)
        if probe is not None:
            stats = world.frame_stats = FrameStats()
            probe.extra.append(stats.snapshot)
            probe.resets.append(stats.reset)
            probe.extra.append(lambda: {"world": world.summary()})
        every = os.environ.get("SWAPD_SIM_ARRIVAL_S")
        requester = mqtt_requester(station_mqtt(cfg)) if cfg.mqtt.enabled else None
        async with world.running(requester, first_arrival_s=3.0):
            if every and world.flow is not None:
                world.flow.every_s = float(every)
            if probe is not None:
                probe.start()
            try:
                yield world.devices()
            finally:
                if probe is not None:
                    probe.stop()

    return run()
