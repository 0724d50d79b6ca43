"""Builds links and device owners from endpoint configs and runs them as named tasks.

RTU endpoints that name the same serial port share one link (one owner per RS-485 line); TCP
endpoints with the same host:port share one connection (a gateway with several unit ids).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from drivers.core.alarm_sink import AlarmSink
from drivers.core.clock import Clock
from drivers.modbus.config import ModbusRtuEndpoint, ModbusTcpEndpoint, resolve_map_path
from drivers.modbus.device import ModbusDevice
from drivers.modbus.link import ModbusLink
from drivers.modbus.regmap import RegisterMap, load_register_map

Endpoint = ModbusTcpEndpoint | ModbusRtuEndpoint


def make_link(e: Endpoint) -> ModbusLink:
    if isinstance(e, ModbusRtuEndpoint):
        return ModbusLink.serial(
            e.serial_port,
            baudrate=e.baudrate,
            parity=e.parity,
            stopbits=e.stopbits,
            bytesize=e.bytesize,
            connect_timeout_s=e.timeout_max_s,
        )
    return ModbusLink.tcp(e.host, e.port, connect_timeout_s=e.timeout_max_s)


class ModbusNetwork:
    """All Modbus devices of a station. `devices[id]` is the owner consumers talk to."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        config_dir: Path | str,
        clock: Clock,
        alarms: AlarmSink,
        maps: Mapping[str, RegisterMap] | None = None,
    ) -> None:
        self.links: dict[str, ModbusLink] = {}
        self.devices: dict[str, ModbusDevice] = {}
        loaded: dict[str, RegisterMap] = {}
        for e in endpoints:
            if maps is not None and e.id in maps:
                regmap = maps[e.id]
            else:
                path = resolve_map_path(e, config_dir)
                if str(path) not in loaded:
                    loaded[str(path)] = load_register_map(path)
                regmap = loaded[str(path)]
            link = self.links.get(e.link_key)
            if link is None:
                link = self.links[e.link_key] = make_link(e)
            if e.id in self.devices:
                raise ValueError(f"duplicate Modbus device id {e.id!r}")
            self.devices[e.id] = ModbusDevice(
                e.id,
                regmap,
                link,
                unit_id=e.unit_id,
                clock=clock,
                alarms=alarms,
                timing=e,
                max_gap=e.effective_max_gap,
            )

    async def run(self) -> None:
        """Run every link and device until cancelled. Links start first, stop last."""
        async with asyncio.TaskGroup() as tg:
            for key, link in self.links.items():
                tg.create_task(link.run(), name=f"modbus-link:{key}")
            await asyncio.sleep(0)
            n = len(self.devices)
            for i, (dev_id, dev) in enumerate(self.devices.items()):
                # spread the cycles over the tick: no burst of every request at once
                tg.create_task(
                    dev.run(start_delay_s=dev.tick_s * i / n), name=f"modbus-device:{dev_id}"
                )
