"""The narrow interface the swap coordinator needs from the robot PLC.

Three async methods; the Modbus TCP implementation is `drivers.robot.modbus_port`. When the shared
Modbus device owner serves the PLC, an adapter implementing this protocol replaces it.
"""

from __future__ import annotations

from typing import Protocol

from drivers.robot.contract import RobotStatus


class RobotPortError(Exception):
    """The PLC could not be reached or answered with an error (retryable)."""


class RobotOfflineError(RobotPortError, TimeoutError):
    """No answer from the PLC."""


class RobotPort(Protocol):
    async def command(self, unit: str, step_code: int, arg: int, seq: int) -> None:
        """Write step code, argument and sequence counter of `unit` in one write."""
        ...

    async def read_status(self) -> RobotStatus:
        """One snapshot of the status registers."""
        ...

    async def set_halt(self, units: frozenset[str]) -> None:
        """Set the halt register to exactly `units` (level: halted while set)."""
        ...
