"""A slot's CAN bus, as the station config describes it (embedded under `slots[].can`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CanBusConfig(BaseModel):
    """`socketcan` (hardware, channel `can0`), `slcan` (channel `socket://host:port` for the
    simulator, or a serial device such as `/dev/ttyACM0`), `virtual` (one process, channel =
    any name shared by the two ends)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interface: Literal["socketcan", "slcan", "virtual"]
    channel: str = Field(min_length=1)
    bitrate: int = Field(default=250_000, gt=0)

    @model_validator(mode="after")
    def _check_channel(self) -> CanBusConfig:
        if self.interface == "slcan":
            ch = self.channel
            if "://" in ch and not ch.startswith("socket://"):
                raise ValueError("slcan channel must be socket://host:port or a serial device")
            if ch.startswith("socket://"):
                host, _, port = ch.removeprefix("socket://").rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError("slcan channel must look like socket://host:port")
        if self.interface == "socketcan" and ("/" in self.channel or ":" in self.channel):
            raise ValueError("socketcan channel is an interface name such as can0 or vcan0")
        return self
