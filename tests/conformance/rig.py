"""The test rig: the composed daemon (`build_station`, the composition root) against the
conformance peers. Every slot has a seat on its own python-can virtual bus where a GB/T BMS peer
can be plugged; the seat is also the charger simulator's electrical load, so the pack only gets
what the charger really delivers. The robot PLC is the contract peer; it asks the rig whether a
slot's output is live (charger enabled, read over Modbus like any outside observer, or current
flowing into the pack) and tells it when a pack leaves or enters a slot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from drivers.core.clock import SystemClock
from edge.app.station import Station, build_station
from edge.config import StationConfig, load_config
from sim.devices.charger import run_charger_sims, spec_from_endpoint
from tests.conformance.gbt_bms import BmsPeerConfig, GbtBmsPeer, Phase
from tests.conformance.robot_plc import RobotPlcPeer
from tests.edge.station_fixtures import mini_config

ENABLE_REG = 102  # charger-generic.yaml: holding 102 = enable
# BMS phases in which no session is under way (a pack may leave its slot).
SETTLED = {Phase.WAIT_CHM, Phase.HANDSHAKE, Phase.ENDED, Phase.ERROR}


@dataclass
class Seat:
    """A rack slot's connector: CAN to the plugged pack's BMS, and the charger's load."""

    slot_id: str
    channel: str
    peer: GbtBmsPeer | None = None
    task: asyncio.Task[None] | None = None
    charger_enabled: bool = False
    history: list[GbtBmsPeer] = field(default_factory=list)

    def plug(self, config: BmsPeerConfig) -> GbtBmsPeer:
        assert self.peer is None, f"{self.slot_id} already holds a pack"
        peer = GbtBmsPeer({"interface": "virtual", "channel": self.channel}, config)
        self.peer = peer
        self.history.append(peer)
        self.task = asyncio.create_task(peer.run(), name=f"bms-peer-{self.slot_id}")
        return peer

    async def unplug(self) -> GbtBmsPeer | None:
        peer, task = self.peer, self.task
        self.peer, self.task = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return peer

    # The charger simulator's load (docs/modbus.md `ChargerLoad`).
    def pack_voltage_v(self) -> float:
        return self.peer.pack_voltage_v() if self.peer else 0.0

    def max_current_a(self) -> float:
        return self.peer.max_current_a() if self.peer else 0.0

    def absorb(self, current_a: float, dt_s: float) -> None:
        if self.peer:
            self.peer.absorb(current_a, dt_s)

    def output_live(self) -> bool:
        """Charger enabled, current flowing, or the pack's contactors still closed (its GB/T
        session not ended: HV on the connector)."""
        peer = self.peer
        live_pack = peer is not None and (peer.delivered_a > 1.0 or peer.contactors)
        return self.charger_enabled or live_pack


@dataclass
class Rig:
    config: StationConfig
    station: Station
    seats: list[Seat]  # index = PLC slot number - 1
    plc: RobotPlcPeer
    arriving: dict[str, BmsPeerConfig]  # pack id -> its BMS, plugged when stored in a slot

    def seat(self, slot_id: str) -> Seat:
        return next(s for s in self.seats if s.slot_id == slot_id)


async def _watch_chargers(cfg: StationConfig, seats: list[Seat]) -> None:
    """Read every charger's enable register like an outside observer (20 Hz)."""
    clients = [
        AsyncModbusTcpClient(c.host, port=c.port, timeout=1, retries=0) for c in cfg.chargers
    ]
    by_charger = {c.id: i for i, c in enumerate(cfg.chargers)}
    try:
        while True:
            for seat, slot in zip(seats, cfg.slots, strict=True):
                client = clients[by_charger[slot.charger]]
                try:
                    if not client.connected:
                        await client.connect()
                    rr = await client.read_holding_registers(ENABLE_REG, count=1, device_id=1)
                    if not rr.isError():
                        seat.charger_enabled = bool(rr.registers[0])
                except Exception:  # noqa: BLE001 - an observer that misses a read tries again
                    pass
            await asyncio.sleep(0.05)
    finally:
        for c in clients:
            c.close()


@contextlib.asynccontextmanager
async def conformance_station(
    tmp_path: Path,
    n_slots: int,
    packs: dict[int, BmsPeerConfig],
    *,
    plc_packs: dict[int, str] | None = None,
    step_s: float = 0.1,
) -> AsyncIterator[Rig]:
    """`packs`: PLC slot number (1-based) -> the BMS plugged there at start."""
    path = mini_config(tmp_path, n_slots=n_slots)
    cfg = load_config(path)
    seats = [Seat(s.id, s.bus.channel) for s in cfg.slots]

    def on_slot(slot: int, pack: str | None) -> None:
        seat = seats[slot - 1]
        if pack is None:
            peer = seat.peer
            if peer is not None and peer.phase not in SETTLED:
                # GB/T 27930 §4 phase 6: the charger unlocks only after the end (CSD).
                peer.violate("unplugged_mid_session", f"pack pulled out in {peer.phase.value}")
            asyncio.get_running_loop().create_task(seat.unplug(), name=f"unplug-{slot}")
        elif pack in pending:
            seat.plug(pending.pop(pack))

    pending: dict[str, BmsPeerConfig] = {}
    plc = RobotPlcPeer(
        slots=n_slots,
        packs_in_slots=plc_packs or {n: f"pack{n}" for n in packs},
        step_s=step_s,
        output_live=lambda slot: seats[slot - 1].output_live(),
        on_slot=on_slot,
    )
    await plc.start(cfg.robot.host, cfg.robot.port)
    by_charger = {s.charger: seats[i] for i, s in enumerate(cfg.slots)}
    specs = [spec_from_endpoint(c, path.parent, load=by_charger[c.id]) for c in cfg.chargers]
    watcher: asyncio.Task[None] | None = None
    try:
        async with run_charger_sims(specs, speed=1.0):
            for n, pc in packs.items():
                seats[n - 1].plug(pc)
            watcher = asyncio.create_task(_watch_chargers(cfg, seats), name="charger-watch")
            station = build_station(cfg, SystemClock())
            run = asyncio.create_task(station.run(), name="station")
            try:
                yield Rig(cfg, station, seats, plc, pending)
            finally:
                station.stop()
                async with asyncio.timeout(15):
                    await run
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                for seat in seats:
                    await seat.unplug()
    finally:
        await plc.stop()
