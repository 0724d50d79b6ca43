"""One exception tree for the Modbus layer. Retryable (communication) vs permanent is in the type."""

from __future__ import annotations


class ModbusError(Exception):
    """Base of every error this package raises."""


class ModbusCommError(ModbusError):
    """A request got no usable answer. Retryable."""


class ModbusTimeoutError(ModbusCommError, TimeoutError):
    """No answer within the request timeout (the device is silent)."""


class ModbusConnectionError(ModbusCommError, ConnectionError):
    """The connection (socket or serial port) is not open and could not be opened."""


class ModbusExceptionResponse(ModbusCommError):
    """The device answered with a Modbus exception code (it is alive but refused)."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        super().__init__(f"exception response code {code}{': ' + detail if detail else ''}")


class ModbusMalformedResponse(ModbusCommError):
    """The device answered with something unusable: wrong length, wrong function, garbage."""


class PointError(ModbusError, KeyError):
    """Unknown point name, or a point that cannot be used this way (write to read-only)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WriteRangeError(ModbusError, ValueError):
    """A value to write is outside its point's range (type limits, scale, map min/max)."""


class DeviceOfflineError(ModbusCommError):
    """The device is offline: nothing can be written to it now."""


class WriteVerifyError(ModbusCommError):
    """A write was sent but the read-back did not confirm it (after the retry)."""
