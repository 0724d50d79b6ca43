"""Modbus layer: register maps as data, block planner, device owners over TCP and RTU."""

from drivers.core.quality import Quality
from drivers.modbus.codec import Value
from drivers.modbus.config import (
    ModbusEndpoint,
    ModbusRtuEndpoint,
    ModbusTcpEndpoint,
    ModbusTiming,
    check_endpoint_against_map,
    check_endpoints,
    resolve_map_path,
)
from drivers.modbus.device import (
    DeviceCounters,
    DeviceState,
    ModbusDevice,
    PointValue,
    Snapshot,
)
from drivers.modbus.errors import (
    DeviceOfflineError,
    ModbusCommError,
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusMalformedResponse,
    ModbusTimeoutError,
    PointError,
    WriteRangeError,
    WriteVerifyError,
)
from drivers.modbus.link import ModbusLink
from drivers.modbus.network import ModbusNetwork
from drivers.modbus.planner import Block, plan_blocks, plan_map
from drivers.modbus.regmap import RegisterMap, load_register_map, validate_map_file

__all__ = [
    "Block",
    "DeviceCounters",
    "DeviceOfflineError",
    "DeviceState",
    "ModbusCommError",
    "ModbusConnectionError",
    "ModbusDevice",
    "ModbusEndpoint",
    "ModbusError",
    "ModbusExceptionResponse",
    "ModbusMalformedResponse",
    "ModbusLink",
    "ModbusNetwork",
    "ModbusRtuEndpoint",
    "ModbusTcpEndpoint",
    "ModbusTiming",
    "ModbusTimeoutError",
    "PointError",
    "PointValue",
    "Quality",
    "RegisterMap",
    "Snapshot",
    "Value",
    "WriteRangeError",
    "WriteVerifyError",
    "check_endpoint_against_map",
    "check_endpoints",
    "load_register_map",
    "plan_blocks",
    "plan_map",
    "resolve_map_path",
    "validate_map_file",
]
