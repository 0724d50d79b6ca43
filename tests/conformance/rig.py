"""The test rig: the composed daemon against the conformance peers, either in this process
(`build_station`, the composition root) or as a real `swapd run` child process
(`daemon="process"`). Every slot has a seat on its own python-can virtual bus where a GB/T BMS
peer can be plugged; for a child daemon each seat's bus is bridged to SLCAN over TCP (the
daemon's slot bus is python-can's `slcan` interface on `socket://127.0.0.1:PORT`, as a station
with a USB-CAN adapter or the two-process bench). The seat is also the charger simulator's
electrical load, so the pack only gets what the charger really delivers. The robot PLC is the
contract peer; it asks the rig whether a slot's output is live (charger enabled, read over Modbus
like any outside observer, or current flowing into the pack) and tells it when a pack leaves or
enters a slot. Chargers and the PLC are served on loopback TCP either way."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import can
from pymodbus.client import AsyncModbusTcpClient

from drivers.can.codec import CanFrame
from drivers.core.clock import SystemClock
from drivers.modbus.config import ModbusTcpEndpoint
from edge.app.station import Station, build_station
from edge.config import StationConfig, load_config
from sim.devices.charger import ChargerSim, run_charger_sims, spec_from_endpoint
from sim.devices.slcan_server import SlcanPort
from tests.conformance.gbt_bms import BmsPeerConfig, GbtBmsPeer, Phase
from tests.conformance.robot_plc import RobotPlcPeer
from tests.conformance.vendors.base import VendorEmulator, serving
from tests.edge.station_fixtures import mini_config
from tests.swapd_proc import wait_ctl_ready

LIMIT_REG, ENABLE_REG = 101, 102  # charger-generic.yaml: holding 101 = current limit, 102 = enable
Daemon = Literal["in-process", "process"]
GENERIC_MAP = "builtin:charger-generic"
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
    # The current limit the daemon last wrote to the charger (read like `charger_enabled`), and
    # when the observer first saw each value (monotonic): the setpoint's lag, from outside.
    current_limit_a: float = 0.0
    limit_seen: list[tuple[float, float]] = field(default_factory=list)

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
    station: Station | None  # None: the daemon is a child process (`daemon`)
    seats: list[Seat]  # index = PLC slot number - 1
    plc: RobotPlcPeer
    arriving: dict[str, BmsPeerConfig]  # pack id -> its BMS, plugged when stored in a slot
    chargers: dict[str, ChargerSim] = field(default_factory=dict)
    daemon: SwapdProcess | None = None

    def seat(self, slot_id: str) -> Seat:
        return next(s for s in self.seats if s.slot_id == slot_id)


async def _watch_chargers(cfg: StationConfig, seats: list[Seat], period_s: float = 0.05) -> None:
    """Read every charger's current limit and enable registers like an outside observer."""
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
                    rr = await client.read_holding_registers(LIMIT_REG, count=2, device_id=1)
                    if not rr.isError():
                        limit = rr.registers[0] / 10.0
                        if limit != seat.current_limit_a:
                            seat.limit_seen.append((time.monotonic(), limit))
                        seat.current_limit_a = limit
                        seat.charger_enabled = bool(rr.registers[1])
                except Exception:  # noqa: BLE001 - an observer that misses a read tries again
                    pass
                # pymodbus waits with asyncio.wait_for, which on Python 3.11 swallows a cancel
                # that arrives with the answer: the teardown then waited on this task forever
                # (1 run in ~50). The task's pending-cancel count survives; honour it.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
            await asyncio.sleep(period_s)
    finally:
        for c in clients:
            c.close()


class SlcanBridge:
    """One seat's bus as SLCAN over TCP: what the daemon sends on the TCP port goes onto the
    seat's virtual bus (where the BMS peer listens), and back."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.port = SlcanPort(0, name=f"bridge-{channel}")
        self._bus: can.BusABC | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _to_peer(self, frame: CanFrame) -> None:
        if self._bus is not None:
            with contextlib.suppress(can.CanError):
                self._bus.send(
                    can.Message(
                        arbitration_id=frame.arbitration_id,
                        data=frame.data,
                        is_extended_id=True,
                    )
                )

    async def _to_daemon(self, reader: can.AsyncBufferedReader) -> None:
        while True:
            msg = await reader.get_message()
            self.port.send(CanFrame(msg.arbitration_id, bytes(msg.data)))

    async def __aenter__(self) -> SlcanBridge:
        self._bus = can.Bus(interface="virtual", channel=self.channel)
        reader = can.AsyncBufferedReader()
        self._notifier = can.Notifier(
            self._bus, [reader], timeout=0.05, loop=asyncio.get_running_loop()
        )
        self.port.set_handler(self._to_peer)
        self._tasks = [
            asyncio.create_task(self.port.run(), name=f"slcan-bridge-{self.channel}"),
            asyncio.create_task(self._to_daemon(reader), name=f"slcan-bridge-rx-{self.channel}"),
        ]
        async with asyncio.timeout(5):
            await self.port.listening.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._notifier.stop()
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None


# Every child daemon still running: tests/conformance/conftest.py kills what a test that was
# interrupted (pytest-timeout) could not stop.
LIVE: set[subprocess.Popen[bytes]] = set()


class SwapdProcess:
    """`swapd run --config PATH` as a child process, ready once its ctl socket answers. `stop()`
    sends SIGTERM and kills it if it has not exited within the deadline; it is always called."""

    def __init__(self, cfg: StationConfig, log: Path) -> None:
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        swapd = Path(sys.executable).with_name("swapd")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(swapd), "run", "--config", str(self.cfg.source)],
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        LIVE.add(self.proc)
        try:
            await wait_ctl_ready(self.proc, Path(self.cfg.station.ctl_socket), timeout_s)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {self.tail()}") from None
        except TimeoutError:
            raise RuntimeError(f"swapd not ready within {timeout_s} s: {self.tail()}") from None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        self.returncode = proc.returncode
        LIVE.discard(proc)
        self.proc = None
        return self.returncode


def _slcan_config(path: Path, seats: list[Seat], bridges: list[SlcanBridge]) -> None:
    """The config's virtual slot buses become SLCAN over TCP to the seats' bridges."""
    text = path.read_text()
    for seat, bridge in zip(seats, bridges, strict=True):
        old = f"{{interface: virtual, channel: '{seat.channel}'}}"
        assert old in text, old
        text = text.replace(
            old, f"{{interface: slcan, channel: 'socket://127.0.0.1:{bridge.port.port}'}}"
        )
    path.write_text(text)


@contextlib.asynccontextmanager
async def conformance_station(
    tmp_path: Path,
    n_slots: int,
    packs: dict[int, BmsPeerConfig],
    *,
    plc_packs: dict[int, str] | None = None,
    step_s: float = 0.1,
    daemon: Daemon = "in-process",
    mqtt_port: int | None = None,
    station_id: str | None = None,
    watch_period_s: float = 0.05,
    charger_peers: dict[str, VendorEmulator] | None = None,
    charger_map: str = GENERIC_MAP,
) -> AsyncIterator[Rig]:
    """`packs`: PLC slot number (1-based) -> the BMS plugged there at start. `charger_peers`:
    charger id -> a charger peer served at that charger's address instead of the simulator (the
    pack then sees no delivered current). Everything started here is stopped on the way out,
    whatever the test did (a child daemon is killed if SIGTERM does not end it within 15 s).
    `charger_map`: every charger's map; with another than the generic one the rig does not
    watch the chargers' registers (a vendor peer judges every read it gets)."""
    path = mini_config(tmp_path, n_slots=n_slots, mqtt_port=mqtt_port)
    if charger_map != GENERIC_MAP:
        path.write_text(path.read_text().replace(f"map: {GENERIC_MAP}", f"map: {charger_map}"))
    if station_id is not None:
        path.write_text(path.read_text().replace("id: it-station", f"id: {station_id}", 1))
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
    async with contextlib.AsyncExitStack() as stack:
        await plc.start(cfg.robot.host, cfg.robot.port)
        stack.push_async_callback(plc.stop)
        if daemon == "process":
            bridges = [await stack.enter_async_context(SlcanBridge(s.channel)) for s in seats]
            _slcan_config(path, seats, bridges)
            cfg = load_config(path)
        by_charger = {s.charger: seats[i] for i, s in enumerate(cfg.slots)}
        specs = [spec_from_endpoint(c, path.parent, load=by_charger[c.id]) for c in cfg.chargers]
        peers = charger_peers or {}
        for c in cfg.chargers:
            if c.id in peers:
                assert isinstance(c, ModbusTcpEndpoint)
                await stack.enter_async_context(serving(peers[c.id], c.port))
        sims = await stack.enter_async_context(
            run_charger_sims([sp for sp in specs if sp.id not in peers], speed=1.0)
        )

        async def unplug_all() -> None:
            for seat in seats:
                await seat.unplug()

        stack.push_async_callback(unplug_all)
        for n, pc in packs.items():
            seats[n - 1].plug(pc)
        watcher = asyncio.create_task(
            _watch_chargers(cfg, seats, watch_period_s)
            if charger_map == GENERIC_MAP
            else asyncio.Event().wait(),
            name="charger-watch",
        )

        async def stop_watcher() -> None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

        stack.push_async_callback(stop_watcher)
        if daemon == "process":
            proc = SwapdProcess(cfg, tmp_path / "swapd.log")
            stack.push_async_callback(proc.stop)
            await proc.start()
            yield Rig(cfg, None, seats, plc, pending, sims, proc)
            return
        station = build_station(cfg, SystemClock())
        run = asyncio.create_task(station.run(), name="station")

        async def stop_station() -> None:
            station.stop()
            try:
                async with asyncio.timeout(15):
                    await run
            finally:
                if not run.done():
                    run.cancel()
                    await asyncio.gather(run, return_exceptions=True)

        stack.push_async_callback(stop_station)
        yield Rig(cfg, station, seats, plc, pending, sims)
