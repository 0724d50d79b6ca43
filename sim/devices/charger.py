"""Simulated rack charger: a real pymodbus server that serves ANY charger register map.

The simulator reads the same YAML map as the station, so a new vendor map is simulated with no
code. Physics (`ChargerPhysics.step(dt)`, pure): the output follows the setpoints in CC/CV with a
ramp, bounded by the ratings and by the attached load (a `ChargerLoad`, e.g. the CAN pack
simulator); temperature rises with power; the output stops when the watchdog register is not
changed within the map's `watchdog.timeout_s` (protocol time: real, not scaled by `speed`).

Fault injection (`ChargerSim.faults`, or `apply_fault(name, active)`): device fault bits,
silence (requests dropped), slow answers, invalid raw values, exception responses, short
(wrong-length) answers and garbage frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.core.clock import Clock, SystemClock
from drivers.core.datafile import FileRef
from drivers.core.log import get_logger
from drivers.modbus.codec import Value, decode_bit, decode_words, encode
from drivers.modbus.config import ModbusRtuEndpoint, ModbusTcpEndpoint, resolve_map_path
from drivers.modbus.errors import WriteRangeError
from drivers.modbus.regmap import BIT_TABLES, PointSpec, RegisterMap, load_register_map

log = get_logger("sim.charger")

_TABLES = ("coil", "discrete", "holding", "input")  # SimDevice's tuple order
# function code -> table (pymodbus also calls the action with a write's code to read it back)
_FC_TABLE = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    4: "input",
    3: "holding",
    6: "holding",
    16: "holding",
    23: "holding",
}


class ChargerLoad(Protocol):
    """What the charger's output is connected to (a pack)."""

    def pack_voltage_v(self) -> float: ...

    def max_current_a(self) -> float:
        """The most current the pack accepts now (its BMS request)."""
        ...

    def absorb(self, current_a: float, dt_s: float) -> None:
        """The charger delivered `current_a` for `dt_s` (physics seconds). Called every physics
        step, with 0 A while the output is off, so the load's clock (a pack cooling) runs on."""
        ...


class SimpleBattery:
    """Default load: a pack whose voltage rises linearly with state of charge."""

    def __init__(
        self,
        capacity_ah: float = 200.0,
        soc: float = 0.3,
        empty_v: float = 320.0,
        full_v: float = 400.0,
        max_current_a: float = 200.0,
    ) -> None:
        self.capacity_ah = capacity_ah
        self.soc = soc
        self.empty_v = empty_v
        self.full_v = full_v
        self._max_a = max_current_a

    def pack_voltage_v(self) -> float:
        return self.empty_v + (self.full_v - self.empty_v) * self.soc

    def max_current_a(self) -> float:
        return self._max_a if self.soc < 1.0 else 0.0

    def absorb(self, current_a: float, dt_s: float) -> None:
        self.soc = min(1.0, self.soc + current_a * dt_s / 3600.0 / self.capacity_ah)


@dataclass(slots=True)
class ChargerRatings:
    max_voltage_v: float = 1000.0
    max_current_a: float = 250.0
    max_power_kw: float = 60.0


@dataclass(slots=True)
class ChargerPhysics:
    """The power stage. Pure: `step(dt_s)` advances it; no I/O, no clock."""

    ratings: ChargerRatings = field(default_factory=ChargerRatings)
    load: ChargerLoad = field(default_factory=SimpleBattery)
    ramp_a_per_s: float = 100.0
    internal_ohm: float = 0.05
    ambient_c: float = 25.0
    heat_c_per_kw: float = 1.2  # steady-state rise per kW delivered
    thermal_tau_s: float = 120.0
    derate_start_c: float = 70.0
    trip_c: float = 90.0
    voltage_setpoint_v: float = 0.0
    current_limit_a: float = 0.0
    enabled: bool = False
    faults: set[str] = field(default_factory=set)
    output_voltage_v: float = 0.0
    output_current_a: float = 0.0
    temperature_c: float = 25.0
    derated: bool = False

    @property
    def output_power_kw(self) -> float:
        return self.output_voltage_v * self.output_current_a / 1000.0

    @property
    def state(self) -> str:
        if self.faults:
            return "fault"
        if not self.enabled:
            return "standby"
        return "derating" if self.derated else "charging"

    def step(self, dt_s: float) -> None:
        if self.temperature_c >= self.trip_c:
            self.faults.add("over_temperature")
        on = self.enabled and not self.faults
        v_pack = self.load.pack_voltage_v()
        target = 0.0
        self.derated = False
        if on:
            v_set = min(self.voltage_setpoint_v, self.ratings.max_voltage_v)
            i_cv = max(0.0, (v_set - v_pack) / self.internal_ohm)  # CV: taper near the setpoint
            i_power = self.ratings.max_power_kw * 1000.0 / max(v_pack, 1.0)
            target = max(
                0.0,
                min(
                    self.current_limit_a,
                    self.ratings.max_current_a,
                    i_power,
                    self.load.max_current_a(),
                    i_cv,
                ),
            )
            if self.temperature_c > self.derate_start_c:
                factor = max(
                    0.0, (self.trip_c - self.temperature_c) / (self.trip_c - self.derate_start_c)
                )
                if factor < 1.0 and target > 0:
                    self.derated = True
                target *= factor
        step_a = self.ramp_a_per_s * dt_s
        delta = target - self.output_current_a
        self.output_current_a += max(-step_a, min(step_a, delta))
        if not on:
            self.output_current_a = 0.0  # contactor open: no ramp down
        self.output_voltage_v = v_pack + self.output_current_a * self.internal_ohm if on else 0.0
        # Every step, 0 A included: a resting pack keeps cooling on the world's clock.
        self.load.absorb(max(0.0, self.output_current_a), dt_s)
        steady = self.ambient_c + self.heat_c_per_kw * self.output_power_kw
        self.temperature_c += (steady - self.temperature_c) * min(1.0, dt_s / self.thermal_tau_s)


@dataclass(slots=True)
class ChargerFaults:
    fault_bits: set[str] = field(default_factory=set)  # device fault flags (map bit names)
    silent: bool = False  # requests get no answer at all
    slow_s: float = 0.0  # every answer delayed this long
    invalid_values: bool = False  # measured points read as their invalid raw value / NaN
    exception_code: int | None = None  # every request answered with this Modbus exception
    # reads only answered with this exception; writes (the watchdog feed too) still applied: a
    # charger whose measurement side failed, or a gateway that loses read answers
    read_exception_code: int | None = None
    short_answers: bool = False  # reads answered with one register (8 bits) too few
    garbage: bool = False  # answers replaced by random bytes
    ignore_writes: bool = (
        False  # writes acknowledged but not applied (read-back shows the old value)
    )
    # point name -> (how many more writes touching it are refused with exception 6 (busy), only
    # writes of this raw first word / bit, or None for any value)
    refuse_writes: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    frozen: bool = False  # reads serve the image as it was at injection; physics go on
    out_of_range: bool = False  # measured points read an absurd value (raw 0xFFFE words)
    # the power stage no longer follows its setpoint registers (a stuck stage or contactor):
    # writes are applied and read back, the output stays as it was; only the watchdog trip
    # still cuts it
    stuck_output: bool = False


FAULT_NAMES = (
    "silent",
    "slow",
    "invalid_values",
    "exception",
    "read_exception",
    "short_answers",
    "garbage",
    "ignore_writes",
    "refuse_write:<point>",
    "frozen",
    "out_of_range",
    "stuck_output",
)


class ChargerSim:
    """One simulated charger (one unit id): a register image kept in step with its physics."""

    def __init__(
        self,
        device_id: str,
        regmap: RegisterMap,
        *,
        unit_id: int = 1,
        physics: ChargerPhysics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.device_id = device_id
        self.map = regmap
        self.unit_id = unit_id
        self.physics = physics or ChargerPhysics()
        self.faults = ChargerFaults()
        self._clock = clock or SystemClock()
        self.requests: Counter[int] = Counter()  # function code -> count, as seen by the server
        self.request_log: Counter[tuple[int, int, int]] = Counter()  # (fc, address, count)
        self.words: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
        self.bits: dict[str, dict[int, bool]] = {"coil": {}, "discrete": {}}
        for p in regmap.points.values():
            if p.table in BIT_TABLES:
                self.bits[p.table][p.address] = False
            else:
                for i in range(p.words):
                    self.words[p.table][p.address + i] = 0
        wd = regmap.watchdog
        self._wd_point = wd.point if wd else None
        self._wd_timeout_s = wd.timeout_s if wd else math.inf
        self._wd_fed_at = self._clock.monotonic()
        self.watchdog_expired = False
        self.frozen_words: dict[str, dict[int, int]] = {}
        self.frozen_bits: dict[str, dict[int, bool]] = {}
        self.refresh()

    @property
    def watchdog_fed_at(self) -> float:
        """When the station last wrote the watchdog point (the sim's clock): for monitors."""
        return self._wd_fed_at

    def attach_load(self, load: ChargerLoad) -> None:
        """Connect the output to a load (e.g. the CAN pack simulator)."""
        self.physics.load = load

    # ---- register image ----------------------------------------------------------------
    def _set(self, name: str, value: Value) -> None:
        p = self.map.points.get(name)
        if p is None:
            return
        try:
            payload = encode(p, self.map.word_order_of(p), name, value)
        except WriteRangeError:
            return  # the physics went beyond what the map can show; keep the last value
        self._put(p, payload)

    def _put(self, p: PointSpec, payload: list[int] | bool) -> None:
        if isinstance(payload, bool):
            self.bits[p.table][p.address] = payload
        else:
            for i, w in enumerate(payload):
                self.words[p.table][p.address + i] = w

    def _set_invalid(self, name: str) -> bool:
        p = self.map.points.get(name)
        if p is None or p.is_bit:
            return False
        if p.invalid:
            raw = p.invalid[0] & ((1 << p.raw_bits) - 1)
        elif p.type == "f32":
            raw = 0x7FC00000  # NaN
        else:
            return False
        order = self.map.word_order_of(p)
        words = (
            [raw]
            if p.words == 1
            else ([raw >> 16, raw & 0xFFFF] if order == "big" else [raw & 0xFFFF, raw >> 16])
        )
        self._put(p, words)
        return True

    def get(self, name: str) -> Value | None:
        """Decode a point from the register image (what a client would read)."""
        p = self.map.point(name)
        if p.is_bit:
            return decode_bit(p, self.bits[p.table][p.address])[0]
        words = [self.words[p.table][p.address + i] for i in range(p.words)]
        value, ok = decode_words(p, self.map.word_order_of(p), words)
        return value if ok else None

    def refresh(self) -> None:
        """Write the physics' measured values and ratings into the register image."""
        ph = self.physics
        measured: dict[str, Value] = {
            "output_voltage_v": round(ph.output_voltage_v, 3),
            "output_current_a": round(ph.output_current_a, 3),
            "output_power_kw": round(ph.output_power_kw, 3),
            "temperature_c": round(ph.temperature_c, 3),
        }
        for name, v in measured.items():
            if self.faults.out_of_range and name in ("output_voltage_v", "output_current_a"):
                p = self.map.points.get(name)
                if p is not None and not p.is_bit:
                    self._put(p, [0xFFFE] * p.words)
                    continue
            if not (self.faults.invalid_values and self._set_invalid(name)):
                self._set(name, v)
        state_p = self.map.points.get("state")
        if state_p is not None and state_p.enum is not None:
            inverse = {v: k for k, v in state_p.enum.items()}
            raw = inverse.get(ph.state)
            if raw is not None:
                self._set("state", ph.state)
        bits_p = self.map.points.get("fault_bits")
        if bits_p is not None:
            names = set((bits_p.bits or {}).values())
            active = (
                ph.faults
                | self.faults.fault_bits
                | ({"watchdog_expired"} if self.watchdog_expired else set())
            ) & names
            self._set("fault_bits", tuple(sorted(active)))
        r = ph.ratings
        self._set("max_voltage_v", r.max_voltage_v)
        self._set("max_current_a", r.max_current_a)
        self._set("max_power_kw", r.max_power_kw)
        if not ph.enabled and self.map.points.get("enable") is not None:
            self._set("enable", False)

    def _written(self, table: str, address: int, count: int) -> None:
        """A client wrote; decode the rw points it touched into the physics."""
        end = address + count - 1
        for name, p in self.map.points.items():
            if (
                p.table != table
                or p.access != "rw"
                or p.address > end
                or p.address + p.words - 1 < address
            ):
                continue
            if name == self._wd_point:
                self._wd_fed_at = self._clock.monotonic()
                self.watchdog_expired = False
                continue
            value = self.get(name)
            if value is None or self.faults.stuck_output:
                continue
            if name == "voltage_setpoint_v" and isinstance(value, int | float):
                self.physics.voltage_setpoint_v = float(value)
            elif name == "current_limit_a" and isinstance(value, int | float):
                self.physics.current_limit_a = float(value)
            elif name == "enable":
                self.physics.enabled = bool(value) and not self.watchdog_expired
        self.refresh()

    # ---- time --------------------------------------------------------------------------
    def step(self, dt_s: float) -> None:
        """Advance physics by `dt_s` physics seconds and check the watchdog (real time)."""
        expired = self._clock.monotonic() - self._wd_fed_at > self._wd_timeout_s
        if self._wd_point is not None and not self.watchdog_expired and expired:
            self.watchdog_expired = True
            self.physics.enabled = False  # the device drops its own enable
        ph = self.physics
        # an over-temperature trip latches until the stage has cooled below the derating point
        keep_trip = "over_temperature" in ph.faults and ph.temperature_c >= ph.derate_start_c
        ph.faults = set(self.faults.fault_bits) | ({"over_temperature"} if keep_trip else set())
        self.physics.step(dt_s)
        self.refresh()

    # ---- faults ------------------------------------------------------------------------
    def apply_fault(self, name: str, active: bool = True, value: float | int | None = None) -> None:
        """Named fault switch (for `swapd sim fault`): one of FAULT_NAMES or `bit:<flag>`."""
        f = self.faults
        if name.startswith("bit:"):
            flag = name[4:]
            (f.fault_bits.add if active else f.fault_bits.discard)(flag)
        elif name.startswith("refuse_write:"):
            # refuse_write:<point>[:<raw value>], `value` = how many times (default once)
            point, _, raw = name.partition(":")[2].partition(":")
            if point not in self.map.points:
                raise ValueError(f"{name}: no point {point!r} in {self.map.name}")
            if active:
                times = int(value if value is not None else 1)
                f.refuse_writes[point] = (times, int(raw) if raw else None)
            else:
                f.refuse_writes.pop(point, None)
        elif name == "silent":
            f.silent = active
        elif name == "slow":
            f.slow_s = float(value if value is not None else 0.5) if active else 0.0
        elif name == "invalid_values":
            f.invalid_values = active
        elif name == "exception":
            f.exception_code = (
                int(value if value is not None else ExcCodes.DEVICE_BUSY) if active else None
            )
        elif name == "read_exception":
            f.read_exception_code = (
                int(value if value is not None else ExcCodes.DEVICE_FAILURE) if active else None
            )
        elif name == "short_answers":
            f.short_answers = active
        elif name == "garbage":
            f.garbage = active
        elif name == "ignore_writes":
            f.ignore_writes = active
        elif name == "frozen":
            f.frozen = active
            if active:
                self.frozen_words = {t: dict(w) for t, w in self.words.items()}
                self.frozen_bits = {t: dict(b) for t, b in self.bits.items()}
        elif name == "out_of_range":
            f.out_of_range = active
        elif name == "stuck_output":
            f.stuck_output = active
        else:
            raise ValueError(
                f"unknown fault {name!r} (known: {', '.join(FAULT_NAMES)}, bit:<flag>)"
            )
        self.refresh()

    # ---- pymodbus glue -----------------------------------------------------------------
    def sim_device(self) -> SimDevice:
        blocks: list[list[SimData]] = []
        for table in _TABLES:
            if table in BIT_TABLES:
                addrs = sorted(self.bits[table])
                if not addrs:
                    blocks.append([SimData(0, values=[False] * 16, datatype=DataType.BITS)])
                else:
                    span = addrs[-1] - addrs[0] + 1
                    blocks.append(
                        [SimData(addrs[0], values=[False] * span, datatype=DataType.BITS)]
                    )
            else:
                addrs = sorted(self.words[table])
                if not addrs:
                    blocks.append([SimData(0, datatype=DataType.INVALID)])
                else:
                    span = addrs[-1] - addrs[0] + 1
                    blocks.append(
                        [SimData(addrs[0], count=span, values=0, datatype=DataType.REGISTERS)]
                    )
        return SimDevice(
            id=self.unit_id,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            action=partial(_action, self),
        )


def _refused(sim: ChargerSim, table: str | None, address: int, values: list[Any]) -> bool:
    """One-shot refusals: a write touching a point listed in `refuse_writes` (with the listed
    raw value, if one is given) is answered with exception 6 and uses up one refusal."""
    for name, (left, raw) in list(sim.faults.refuse_writes.items()):
        p = sim.map.points[name]
        overlaps = p.address < address + len(values) and p.address + p.words > address
        if left <= 0 or p.table != table or not overlaps:
            continue
        first = p.address - address
        if raw is not None and not 0 <= first < len(values):
            continue
        if raw is None or int(values[first]) == raw:
            sim.faults.refuse_writes[name] = (left - 1, raw)
            return True
    return False


async def _action(
    sim: ChargerSim,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    f = sim.faults
    if f.slow_s > 0:
        await asyncio.sleep(f.slow_s)
    if f.exception_code is not None:
        return ExcCodes(f.exception_code)
    if f.read_exception_code is not None and set_values is None:
        return ExcCodes(f.read_exception_code)
    table = _FC_TABLE.get(function_code)
    if table is None:
        return ExcCodes.ILLEGAL_FUNCTION
    frozen = f.frozen and set_values is None
    if set_values is not None and f.ignore_writes:
        return None  # acknowledged; reads keep serving the image, which did not change
    if (
        set_values is not None
        and f.refuse_writes
        and _refused(sim, table, address, list(set_values))
    ):
        return ExcCodes.DEVICE_BUSY
    if set_values is None and any(
        b.table == table and address < b.address <= address + count - 1 for b in sim.map.barriers
    ):
        # a real device's memory bank ends there: a read across it fails (docs/modbus.md;
        # found by the generic-map conformance peer)
        return ExcCodes.ILLEGAL_ADDRESS
    if table in BIT_TABLES:
        bits = sim.bits[table]
        if set_values is not None:
            for i, v in enumerate(set_values):
                if address + i in bits:
                    bits[address + i] = bool(v)
            sim._written(table, address, len(set_values))
            return None
        if frozen:
            bits = sim.frozen_bits.get(table, bits)
        # `count` registers of 16 packed bits from register (address // 16)
        first = address // 16
        for k in range(count):
            reg = 0
            for b in range(16):
                if bits.get((first + k) * 16 + b, False):
                    reg |= 1 << b
            registers[first - start_address + k] = reg
        return None
    words = sim.words[table]
    if set_values is not None:
        for i, v in enumerate(set_values):
            words[address + i] = int(v) & 0xFFFF
        sim._written(table, address, len(set_values))
        return None
    if frozen:
        words = sim.frozen_words.get(table, words)
    base = address - start_address
    for i in range(count):
        registers[base + i] = words.get(address + i, 0)
    return None


class ChargerSimServer:
    """One pymodbus server (TCP host:port, or an RTU serial port) hosting chargers by unit id."""

    def __init__(
        self,
        sims: Sequence[ChargerSim],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        serial_port: str | None = None,
        baudrate: int = 19200,
        parity: str = "E",
    ) -> None:
        if (port is None) == (serial_port is None):
            raise ValueError("give a TCP port or a serial port")
        self.sims = {s.unit_id: s for s in sims}
        self.host, self.port, self.serial_port = host, port, serial_port
        self._baudrate, self._parity = baudrate, parity
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._sending: ChargerSim | None = None
        self._rng = random.Random(27930)

    @property
    def requests(self) -> int:
        return sum(sum(s.requests.values()) for s in self.sims.values())

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        sim = self.sims.get(pdu.dev_id)
        if not sending:
            if sim is None:
                return pdu
            sim.requests[pdu.function_code] += 1
            addr = int(getattr(pdu, "address", -1))
            count = int(getattr(pdu, "count", 1) or 1)
            sim.request_log[(pdu.function_code, addr, count)] += 1
            return None if sim.faults.silent else pdu  # None: the server sends nothing
        self._sending = sim
        if sim is not None and sim.faults.short_answers:
            regs = getattr(pdu, "registers", None)
            bits = getattr(pdu, "bits", None)
            if pdu.function_code in (3, 4) and regs:
                pdu.registers = regs[:-1]
            elif pdu.function_code in (1, 2) and bits and len(bits) > 8:
                pdu.bits = bits[:-8]
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        sim, self._sending = self._sending, None
        if not sending or sim is None or not sim.faults.garbage:
            return data
        if self.serial_port is None and len(data) > 7:
            # keep the MBAP header (so the stream stays framed), scramble the PDU
            return data[:7] + bytes(self._rng.randrange(256) for _ in range(len(data) - 7))
        return bytes(self._rng.randrange(256) for _ in range(len(data)))

    async def start(self) -> None:
        devices = [s.sim_device() for s in self.sims.values()]
        trace_pdu = cast(Any, self._trace_pdu)
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self._baudrate,
                parity=self._parity,
                trace_pdu=trace_pdu,
                trace_packet=self._trace_packet,
            )
        else:
            assert self.port is not None
            self._server = ModbusTcpServer(
                devices,
                address=(self.host, self.port),
                trace_pdu=trace_pdu,
                trace_packet=self._trace_packet,
            )
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class ChargerSimSpec:
    """Where one simulated charger answers. `map` is a RegisterMap or a path to one."""

    id: str
    map: RegisterMap | FileRef
    unit_id: int = 1
    host: str = "127.0.0.1"
    port: int | None = None
    serial_port: str | None = None
    baudrate: int = 19200
    parity: str = "E"
    ratings: ChargerRatings = field(default_factory=ChargerRatings)
    load: ChargerLoad | None = None


async def _physics_loop(
    sims: Sequence[ChargerSim], clock: Clock, speed: float, step_s: float
) -> None:
    last = clock.monotonic()
    while True:
        await clock.sleep(step_s)
        now = clock.monotonic()
        dt = (now - last) * speed
        last = now
        for s in sims:
            try:
                s.step(dt)
            except Exception:  # one broken sim must not stop the others
                log.exception("charger sim step failed", device=s.device_id)


@contextlib.asynccontextmanager
async def run_charger_sims(
    specs: Sequence[ChargerSimSpec],
    *,
    clock: Clock | None = None,
    speed: float = 1.0,
    step_s: float = 0.1,
) -> AsyncIterator[dict[str, ChargerSim]]:
    """Start simulated chargers (grouped into one server per address) and their physics task;
    yields them by id; stops everything on exit."""
    clk = clock or SystemClock()
    maps: dict[str, RegisterMap] = {}
    sims: dict[str, ChargerSim] = {}
    groups: dict[tuple[str, int | None, str | None], list[ChargerSim]] = {}
    first_spec: dict[tuple[str, int | None, str | None], ChargerSimSpec] = {}
    for sp in specs:
        if isinstance(sp.map, RegisterMap):
            regmap = sp.map
        else:
            key = str(sp.map)
            if key not in maps:
                maps[key] = load_register_map(sp.map)
            regmap = maps[key]
        physics = ChargerPhysics(ratings=sp.ratings, load=sp.load or SimpleBattery())
        sim = ChargerSim(sp.id, regmap, unit_id=sp.unit_id, physics=physics, clock=clk)
        sims[sp.id] = sim
        addr = (sp.host, sp.port, sp.serial_port)
        groups.setdefault(addr, []).append(sim)
        first_spec.setdefault(addr, sp)
    servers: list[ChargerSimServer] = []
    task = asyncio.create_task(
        _physics_loop(list(sims.values()), clk, speed, step_s), name="sim-charger-physics"
    )
    try:
        for addr, group in groups.items():
            sp = first_spec[addr]
            srv = ChargerSimServer(
                group,
                host=sp.host,
                port=sp.port,
                serial_port=sp.serial_port,
                baudrate=sp.baudrate,
                parity=sp.parity,
            )
            await srv.start()
            servers.append(srv)
        yield sims
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for srv in reversed(servers):
            await srv.stop()


async def serve_charger_sims(
    specs: Sequence[ChargerSimSpec], *, clock: Clock | None = None, speed: float = 1.0
) -> None:
    """Run simulated chargers until cancelled (the `swapd sim` entry)."""
    async with run_charger_sims(specs, clock=clock, speed=speed):
        await asyncio.Event().wait()


def spec_from_endpoint(
    endpoint: ModbusTcpEndpoint | ModbusRtuEndpoint,
    config_dir: Path | str,
    *,
    serial_port: str | None = None,
    ratings: ChargerRatings | None = None,
    load: ChargerLoad | None = None,
) -> ChargerSimSpec:
    """The simulator for a station config's charger entry: it answers where the station will
    ask (TCP host:port and unit id). For RTU give the simulator's end of the line
    (`serial_port`, e.g. the other side of a pty pair); default: the endpoint's own port."""
    path = resolve_map_path(endpoint, config_dir)
    if isinstance(endpoint, ModbusRtuEndpoint):
        return ChargerSimSpec(
            endpoint.id,
            path,
            unit_id=endpoint.unit_id,
            serial_port=serial_port or endpoint.serial_port,
            baudrate=endpoint.baudrate,
            parity=endpoint.parity,
            ratings=ratings or ChargerRatings(),
            load=load,
        )
    return ChargerSimSpec(
        endpoint.id,
        path,
        unit_id=endpoint.unit_id,
        host=endpoint.host,
        port=endpoint.port,
        ratings=ratings or ChargerRatings(),
        load=load,
    )
