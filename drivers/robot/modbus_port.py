"""RobotPort over Modbus TCP with pymodbus' AsyncModbusTcpClient."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.robot.contract import CommandEcho, RobotContract, RobotStatus
from drivers.robot.port import RobotOfflineError, RobotPortError


class ModbusRobotPort:
    """One TCP connection to the PLC. Not shared: the swap coordinator is its only user."""

    def __init__(
        self,
        contract: RobotContract,
        host: str,
        port: int,
        *,
        device_id: int = 1,
        timeout_s: float = 0.5,
        retries: int = 1,
    ) -> None:
        self.contract = contract
        self._device_id = device_id
        self._client = AsyncModbusTcpClient(
            host,
            port=port,
            timeout=timeout_s,
            retries=retries,
            reconnect_delay=0.1,
            reconnect_delay_max=2.0,
        )
        self.malformed = 0  # answers that did not decode
        self._connecting = asyncio.Lock()  # pymodbus misbehaves on concurrent connect()

    async def connect(self) -> bool:
        async with self._connecting:
            if self._client.connected:
                return True
            return bool(await self._client.connect())

    def close(self) -> None:
        self._client.close()

    async def _call(self, what: str, request: Callable[[], Awaitable[Any]]) -> Any:
        # `request` builds the pymodbus call lazily: pymodbus raises while building it when the
        # connection is down, so that must happen inside the try.
        try:
            if not self._client.connected and not await self.connect():
                raise RobotOfflineError(f"{what}: PLC not connected")
            rr = await request()
        except ModbusException as e:
            raise RobotOfflineError(f"{what}: {e}") from e
        except OSError as e:
            raise RobotOfflineError(f"{what}: {e}") from e
        # pymodbus waits with asyncio.wait_for, which on Python 3.11 swallows a cancellation
        # that arrives with the answer (the caller's loop then never stops); the task's
        # pending-cancel count survives, so re-raise it (as drivers.modbus.link does).
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        if rr.isError():
            raise RobotPortError(f"{what}: PLC answered {rr}")
        return rr

    async def command(self, unit: str, step_code: int, arg: int, seq: int) -> None:
        addr = self.contract.command_address(unit)
        await self._call(
            f"command {unit}",
            lambda: self._client.write_registers(
                addr, [step_code & 0xFFFF, arg & 0xFFFF, seq & 0xFFFF], device_id=self._device_id
            ),
        )

    async def read_status(self) -> RobotStatus:
        c = self.contract
        rr = await self._call(
            "read status",
            lambda: self._client.read_input_registers(
                c.status_start, count=c.status_count, device_id=self._device_id
            ),
        )
        try:
            return c.decode_status(list(rr.registers))
        except ValueError as e:
            self.malformed += 1
            raise RobotPortError(str(e)) from e

    async def set_halt(self, units: frozenset[str]) -> None:
        c = self.contract
        await self._call(
            "halt",
            lambda: self._client.write_register(
                c.halt_address, c.halt_value(units), device_id=self._device_id
            ),
        )

    async def read_commands(self) -> dict[str, CommandEcho]:
        """Diagnostics: the command registers as the PLC holds them (not needed for recovery:
        the acknowledged seq is enough)."""
        c = self.contract
        rr = await self._call(
            "read commands",
            lambda: self._client.read_holding_registers(
                c.command_start, count=c.command_count, device_id=self._device_id
            ),
        )
        regs = list(rr.registers)
        if len(regs) < c.command_count:
            self.malformed += 1
            raise RobotPortError("read commands: short answer")
        return c.decode_commands(regs)
