"""Config models of a Modbus endpoint, embedded by the station config (`chargers:` items, the
robot PLC). TCP `{id, host, port, unit_id, map}` or RTU `{id, serial_port, baudrate, unit_id,
map}`; which one is decided by the keys present (`serial_port` means RTU), so an error names the
field the user wrote, not a union member.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from drivers.core.resources import data_file, shelf
from drivers.modbus.planner import DEFAULT_MAX_GAP_RTU, DEFAULT_MAX_GAP_TCP
from drivers.modbus.regmap import RegisterMap


class ModbusTiming(BaseModel):
    """Timing shared by both transports. Defaults detect a silent device within ~2.5 s:
    offline_after_cycles x (retries + 1) x timeout_max_s + one period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_floor_s: float = Field(default=0.2, gt=0, le=10)
    timeout_max_s: float = Field(default=0.4, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=5)
    offline_after_cycles: int = Field(default=3, ge=1, le=100)
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=10.0, gt=0, le=3600)
    # Override the map's poll group periods, e.g. {fast: 0.2}
    poll_periods_s: dict[str, Annotated[float, Field(gt=0, le=3600)]] = Field(default_factory=dict)
    max_gap: int | None = Field(default=None, ge=0, le=124)
    watchdog_period_s: float | None = Field(default=None, gt=0, le=60)

    @model_validator(mode="after")
    def _timeouts(self) -> ModbusTiming:
        if self.timeout_max_s < self.timeout_floor_s:
            raise ValueError("timeout_max_s must be >= timeout_floor_s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class ModbusTcpEndpoint(ModbusTiming):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    map: str = Field(min_length=1)

    @property
    def link_key(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def effective_max_gap(self) -> int:
        return DEFAULT_MAX_GAP_TCP if self.max_gap is None else self.max_gap


class ModbusRtuEndpoint(ModbusTiming):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    serial_port: str = Field(min_length=1)
    baudrate: int = Field(default=19200, ge=300, le=1_000_000)
    parity: Literal["N", "E", "O"] = "E"  # the Modbus serial line default is even parity
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)
    map: str = Field(min_length=1)

    @property
    def link_key(self) -> str:
        return f"rtu://{self.serial_port}"

    @property
    def effective_max_gap(self) -> int:
        return DEFAULT_MAX_GAP_RTU if self.max_gap is None else self.max_gap


def _kind(v: Any) -> str:
    if isinstance(v, ModbusRtuEndpoint):
        return "modbus-rtu"
    if isinstance(v, ModbusTcpEndpoint):
        return "modbus-tcp"
    if isinstance(v, dict) and "serial_port" in v:
        return "modbus-rtu"
    return "modbus-tcp"


# The tags contain "-" so drivers.core.datafile leaves them out of error paths (`chargers.0.port`).
ModbusEndpoint = Annotated[
    Annotated[ModbusTcpEndpoint, Tag("modbus-tcp")]
    | Annotated[ModbusRtuEndpoint, Tag("modbus-rtu")],
    Discriminator(_kind),
]


# Package data: the shipped charger maps, `map: builtin:<name>` in a station config.
SHIPPED_MAPS = shelf("drivers.modbus", "maps")


def resolve_map_path(
    endpoint: ModbusTcpEndpoint | ModbusRtuEndpoint, config_dir: Path | str
) -> Traversable:
    """The endpoint's map file: `builtin:NAME` is drivers/modbus/maps/NAME.yaml (shipped);
    a relative path is relative to the config file's directory. Raises DataFileError for an
    unknown builtin name."""
    return data_file(endpoint.map, config_dir, SHIPPED_MAPS)


def check_endpoints(
    endpoints: list[ModbusTcpEndpoint | ModbusRtuEndpoint],
) -> list[tuple[int, str, str]]:
    """Cross-endpoint problems as (list index, field, message): duplicate ids, two devices with
    one unit id on one link, RTU devices on one port with different line settings."""
    out: list[tuple[int, str, str]] = []
    ids: dict[str, int] = {}
    units: dict[tuple[str, int], int] = {}
    lines: dict[str, tuple[int, ModbusRtuEndpoint]] = {}
    for i, e in enumerate(endpoints):
        if e.id in ids:
            out.append((i, "id", f"duplicate id {e.id!r} (also item {ids[e.id]})"))
        ids.setdefault(e.id, i)
        key = (e.link_key, e.unit_id)
        if key in units:
            out.append(
                (i, "unit_id", f"unit {e.unit_id} on {e.link_key} also used by item {units[key]}")
            )
        units.setdefault(key, i)
        if isinstance(e, ModbusRtuEndpoint):
            first = lines.setdefault(e.serial_port, (i, e))
            f = first[1]
            if (f.baudrate, f.parity, f.stopbits, f.bytesize) != (
                e.baudrate,
                e.parity,
                e.stopbits,
                e.bytesize,
            ):
                out.append(
                    (i, "baudrate", f"line settings differ from item {first[0]} on the same port")
                )
    return out


def check_endpoint_against_map(
    endpoint: ModbusTcpEndpoint | ModbusRtuEndpoint, regmap: RegisterMap
) -> list[tuple[str, str]]:
    """(field, message) for endpoint settings the map cannot honour (for check-config)."""
    out: list[tuple[str, str]] = []
    for group in endpoint.poll_periods_s:
        if group not in regmap.poll_groups:
            known = ", ".join(sorted(regmap.poll_groups))
            out.append(
                (
                    f"poll_periods_s.{group}",
                    f"map {regmap.name!r} has no poll group {group!r} (known: {known})",
                )
            )
    if endpoint.watchdog_period_s is not None and regmap.watchdog is None:
        out.append(("watchdog_period_s", f"map {regmap.name!r} declares no watchdog"))
    if regmap.watchdog is not None:
        period = endpoint.watchdog_period_s or regmap.watchdog.period_s
        if period >= regmap.watchdog.timeout_s:
            out.append(
                (
                    "watchdog_period_s",
                    f"{period} s does not feed a {regmap.watchdog.timeout_s} s device watchdog",
                )
            )
    return out
