"""The owner of one Modbus connection: a TCP socket, or one serial port shared by several unit
ids on an RS-485 line. A `ModbusLink` holds the pymodbus client and serialises every request
through one FIFO lock, so the devices of a line take turns and never collide on the bus; its
`run()` task holds the connection's lifetime (requests are refused before it starts, the port is
closed when it stops). pymodbus' own retries and background reconnect are off: the device owner
decides.

Why a lock and not a request queue served by the link's task: measured in bench/modbus_poll.py,
the queue hop (two more event-loop turns per request) cost ~2 % of a core at 300 requests/s,
a sixth of this layer's budget; the lock keeps the same one-at-a-time guarantee.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.core.aio import raise_if_cancelled
from drivers.core.log import get_logger
from drivers.modbus.errors import (
    ModbusCommError,
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusMalformedResponse,
    ModbusTimeoutError,
)
from drivers.modbus.regmap import Table

log = get_logger("modbus")

T = TypeVar("T")
Words = list[int]
Bits = list[bool]

# The client's own timeout is only a backstop: requests run under our adaptive timeout.
_BACKSTOP_TIMEOUT_S = 30.0


@dataclass(slots=True)
class LinkCounters:
    requests: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    exception_responses: int = 0
    malformed: int = 0
    connects: int = 0


@dataclass(frozen=True, slots=True)
class _Request:
    op: Literal["read", "write"]
    unit_id: int
    table: Table
    address: int
    count: int
    values: Words | Bits | None
    timeout_s: float


class ModbusLink:
    """Executes requests on one connection. Construct with `tcp()` or `serial()`, run `run()`
    as a named task, then call `read()` / `write()` from any task."""

    def __init__(
        self,
        name: str,
        client: AsyncModbusTcpClient | AsyncModbusSerialClient,
        *,
        serial_line: bool,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self.name = name
        self.serial_line = serial_line
        self._client = client
        self._connect_timeout_s = connect_timeout_s
        self._lock = asyncio.Lock()  # FIFO: devices on a line take turns in arrival order
        self._running = False
        self._want_reconnect = False
        self.counters = LinkCounters()

    @classmethod
    def tcp(cls, host: str, port: int, *, connect_timeout_s: float = 1.0) -> ModbusLink:
        client = AsyncModbusTcpClient(
            host,
            port=port,
            timeout=_BACKSTOP_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,  # no background reconnect task: we reconnect on demand
            reconnect_delay_max=0,
        )
        return cls(
            f"tcp://{host}:{port}", client, serial_line=False, connect_timeout_s=connect_timeout_s
        )

    @classmethod
    def serial(
        cls,
        port: str,
        *,
        baudrate: int = 19200,
        parity: str = "E",
        stopbits: int = 1,
        bytesize: int = 8,
        connect_timeout_s: float = 1.0,
    ) -> ModbusLink:
        client = AsyncModbusSerialClient(
            port,
            framer=FramerType.RTU,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            timeout=_BACKSTOP_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )
        return cls(f"rtu://{port}", client, serial_line=True, connect_timeout_s=connect_timeout_s)

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    def request_reconnect(self) -> None:
        """Ask for a fresh connection before the next request (a TCP peer that went silent may
        have a dead socket). A serial port stays open: other units on the line still answer."""
        if not self.serial_line:
            self._want_reconnect = True

    async def read(
        self, unit_id: int, table: Table, address: int, count: int, timeout_s: float
    ) -> tuple[Words | Bits, float]:
        """(registers or bits, latency_s). Raises a ModbusCommError subclass."""
        return await self._submit(_Request("read", unit_id, table, address, count, None, timeout_s))

    async def write(
        self, unit_id: int, table: Table, address: int, values: Words | Bits, timeout_s: float
    ) -> float:
        """Write registers (FC6 for one, FC16 for more) or one coil (FC5); returns latency_s."""
        if table in ("input", "discrete") or (table == "coil" and len(values) != 1) or not values:
            raise ValueError(f"cannot write {len(values)} values to {table}")
        req = _Request("write", unit_id, table, address, len(values), values, timeout_s)
        return (await self._submit(req))[1]

    async def _submit(self, req: _Request) -> tuple[Words | Bits, float]:
        if not self._running:
            raise ModbusConnectionError(f"{self.name}: link not running")
        async with self._lock:
            try:
                return await self._execute(req)
            except ModbusCommError:
                raise
            except Exception as e:  # a driver bug or an OS error we did not foresee
                log.exception("request failed unexpectedly; reopening", link=self.name)
                self.counters.connection_errors += 1
                self._client.close()
                raise ModbusConnectionError(f"{self.name}: {e!r}") from e

    async def run(self) -> None:
        """The connection's lifetime: requests are served while this runs; cancel to close."""
        self._running = True
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            self._client.close()

    async def _ensure_connected(self) -> None:
        if self._want_reconnect:
            self._want_reconnect = False
            self._client.close()
        if self._client.connected:
            return
        self.counters.connects += 1
        try:
            ok = await self._bounded(self._client.connect(), self._connect_timeout_s)
        except TimeoutError:
            ok = False
        except Exception as e:  # OSError, termios.error, serial.SerialException: all "cannot open"
            self.counters.connection_errors += 1
            self._client.close()
            raise ModbusConnectionError(f"{self.name}: cannot connect: {e!r}") from e
        if not ok:
            self._client.close()
            self.counters.connection_errors += 1
            raise ModbusConnectionError(f"{self.name}: cannot connect")

    async def _execute(self, req: _Request) -> tuple[Words | Bits, float]:
        await self._ensure_connected()
        loop = asyncio.get_running_loop()
        self.counters.requests += 1
        t0 = loop.time()
        try:
            rr = await self._bounded(self._call(req), req.timeout_s)
        except TimeoutError:
            self.counters.timeouts += 1
            raise ModbusTimeoutError(
                f"{self.name}: unit {req.unit_id} silent for {req.timeout_s:.3f} s"
            ) from None
        except ConnectionException as e:
            self.counters.connection_errors += 1
            raise ModbusConnectionError(f"{self.name}: {e}") from e
        except (ModbusException, struct.error, ValueError, IndexError) as e:
            # a wrong transaction/unit id, an undecodable frame
            self.counters.malformed += 1
            raise ModbusMalformedResponse(f"{self.name}: unit {req.unit_id}: {e}") from e
        latency = loop.time() - t0
        if rr.isError():
            self.counters.exception_responses += 1
            raise ModbusExceptionResponse(int(getattr(rr, "exception_code", 0)), self.name)
        try:
            return self._check(req, rr), latency
        except ModbusMalformedResponse:
            self.counters.malformed += 1
            raise

    async def _bounded(self, aw: Awaitable[T], timeout_s: float) -> T:
        """Await `aw` for at most `timeout_s`. pymodbus waits with `asyncio.wait_for`, which on
        Python 3.11 can swallow a cancellation of our task that arrives with the answer; the
        task's pending-cancel count survives that, so re-raise it here."""
        async with asyncio.timeout(timeout_s):
            result = await aw
        raise_if_cancelled()
        return result

    def _call(self, req: _Request) -> Awaitable[ModbusPDU]:
        c = self._client
        a, n, u = req.address, req.count, req.unit_id
        if req.op == "read":
            if req.table == "holding":
                return c.read_holding_registers(a, count=n, device_id=u)
            if req.table == "input":
                return c.read_input_registers(a, count=n, device_id=u)
            if req.table == "coil":
                return c.read_coils(a, count=n, device_id=u)
            return c.read_discrete_inputs(a, count=n, device_id=u)
        values = req.values or []
        if req.table == "coil":
            return c.write_coil(a, bool(values[0]), device_id=u)
        words = [int(v) for v in values]
        if len(words) == 1:
            return c.write_register(a, words[0], device_id=u)
        return c.write_registers(a, words, device_id=u)

    def _check(self, req: _Request, rr: ModbusPDU) -> Words | Bits:
        if req.op == "write":
            return []
        if req.table in ("coil", "discrete"):
            bits = list(getattr(rr, "bits", None) or [])
            if len(bits) < req.count or len(bits) >= req.count + 8:
                raise ModbusMalformedResponse(
                    f"{self.name}: asked {req.count} bits, got {len(bits)}"
                )
            return [bool(b) for b in bits[: req.count]]
        regs = list(getattr(rr, "registers", None) or [])
        if len(regs) != req.count:
            raise ModbusMalformedResponse(
                f"{self.name}: asked {req.count} registers, got {len(regs)}"
            )
        return regs
