"""A vendor charger emulator: a pymodbus server whose register image and behaviour are written
from the vendor's published register table. It does not import drivers.modbus and never reads
our map files: the map and the emulator are two independent transcriptions of one table, so a
test that passes through both checks the map against the document.

A vendor module subclasses `VendorEmulator`: `blocks` (table -> (first, count) served),
`read_refused(table, address)` for addresses the device answers with exception 2,
`written(table, address, values)` to apply a write, and `step(dt_s)` for its physics (a pack
that takes the current the device allows)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

_FC = {3: "holding", 6: "holding", 16: "holding", 4: "input"}


class VendorEmulator:
    blocks: dict[str, tuple[int, int]] = {}

    def __init__(self, unit_id: int = 1) -> None:
        self.unit_id = unit_id
        self.regs: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
        self.requests: Counter[tuple[int, int, int]] = Counter()  # (function, address, count)
        self.refused = 0  # reads answered with exception 2
        self.battery_v = 350.0  # the pack on the output (its own simple model)
        self.delivered_ah = 0.0

    # -- what a vendor module provides ---------------------------------------------------------
    def read_refused(self, table: str, address: int) -> bool:
        return False

    def written(self, table: str, address: int, values: list[int]) -> bool:
        """Apply a write; False answers exception 2 (not writable)."""
        return False

    def step(self, dt_s: float) -> None: ...

    # -- helpers -------------------------------------------------------------------------------
    def put32(self, table: str, address: int, value: int) -> None:
        value &= 0xFFFFFFFF
        self.regs[table][address] = value >> 16
        self.regs[table][address + 1] = value & 0xFFFF

    def get32(self, table: str, address: int) -> int:
        r = self.regs[table]
        return (r.get(address, 0) << 16) | r.get(address + 1, 0)

    def charge(self, current_a: float, dt_s: float) -> None:
        """The pack absorbs `current_a`; its voltage creeps up (a 150 Ah pack)."""
        self.delivered_ah += current_a * dt_s / 3600.0
        self.battery_v = 350.0 + 0.3 * self.delivered_ah

    # -- pymodbus glue -------------------------------------------------------------------------
    def device(self) -> SimDevice:
        def regs(table: str) -> list[SimData]:
            if table not in self.blocks:
                return [SimData(0, datatype=DataType.INVALID)]
            first, count = self.blocks[table]
            return [SimData(first, count=count, values=0, datatype=DataType.REGISTERS)]

        no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit_id,
            simdata=(no_bits, no_bits, regs("holding"), regs("input")),
            action=partial(_action, self),
        )


async def _action(
    emu: VendorEmulator,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    table = _FC.get(function_code)
    if table is None:
        return ExcCodes.ILLEGAL_FUNCTION
    if set_values is not None:
        emu.requests[(function_code, address, len(set_values))] += 1
        ok = emu.written(table, address, [int(v) & 0xFFFF for v in set_values])
        return None if ok else ExcCodes.ILLEGAL_ADDRESS
    if function_code in (6, 16):
        return None  # pymodbus reading back what it just wrote: not a client's read
    emu.requests[(function_code, address, count)] += 1
    if any(emu.read_refused(table, a) for a in range(address, address + count)):
        emu.refused += 1
        return ExcCodes.ILLEGAL_ADDRESS
    base = address - start_address
    for i in range(count):
        registers[base + i] = emu.regs[table].get(address + i, 0)
    return None


@contextlib.asynccontextmanager
async def serving(
    emu: VendorEmulator, port: int, host: str = "127.0.0.1", step_s: float = 0.05
) -> AsyncIterator[VendorEmulator]:
    server = ModbusTcpServer([emu.device()], address=(host, port))
    await server.serve_forever(background=True)

    async def physics() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(step_s)
            now = loop.time()
            emu.step(now - last)
            last = now

    emu.step(0.0)
    task = asyncio.create_task(physics(), name="vendor-emulator")
    try:
        yield emu
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.shutdown()  # type: ignore[no-untyped-call]
