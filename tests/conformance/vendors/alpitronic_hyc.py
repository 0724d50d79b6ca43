"""alpitronic hypercharger (DC fast charger), connector 1, emulated from its Modbus TCP table.

Source: alpitronic, "hypercharger Load Management Manual", v2.5 register layout, as
transcribed in OpenEMS io.openems.edge.evcs.hypercharger (EvcsAlpitronicHyperchargerImpl,
defineModbusProtocolV25, and AvailableState). evcc-io/evcc charger/alpitronic.go transcribes
the same rows with connector 1's holding block at 100 instead of 0; we follow the v2.5 layout.

Rows used (0-based; 32-bit values high word first):
  input 100 connector state (0 available, 1 preparing tag id ready, 2 preparing EV ready,
        3 charging, 4 suspended EV, 5 suspended EVSE, 6 finishing, 7 reserved,
        8 unavailable, 9 unavailable firmware update, 10 faulted, 11 unavailable connection)
  input 101-102 DC voltage, 0.01 V      input 103 DC current, 0.01 A
  input 104-105 power, W                input 106 charge time, s
  input 107 charged energy, 0.01 kWh    input 108 EV SoC, 0.01 %
  input 110-111 EV max charging power, W   input 112-113 EV min charging power, W
  holding 0-1 charge power limit, W (read/write)   holding 2-3 reactive power setpoint
"""

from __future__ import annotations

from tests.conformance.vendors.base import VendorEmulator

EV_MAX_W = 150_000
CHARGING, SUSPENDED_EVSE = 3, 5


class AlpitronicHyc(VendorEmulator):
    blocks = {"input": (100, 20), "holding": (0, 4)}

    def __init__(self, unit_id: int = 1) -> None:
        super().__init__(unit_id)
        self.seconds = 0.0
        self.energy_kwh = 0.0

    def written(self, table: str, address: int, values: list[int]) -> bool:
        if table != "holding" or address < 0 or address + len(values) > 4:
            return False
        for i, v in enumerate(values):
            self.regs["holding"][address + i] = v
        return True

    @property
    def power_limit_w(self) -> int:
        return self.get32("holding", 0)

    @property
    def state(self) -> int:
        return self.regs["input"].get(100, 0)

    @property
    def current_a(self) -> float:
        return self.regs["input"].get(103, 0) / 100.0

    def step(self, dt_s: float) -> None:
        power_w = min(self.power_limit_w, EV_MAX_W)
        current = power_w / self.battery_v
        charging = current > 0.0
        self.charge(current, dt_s)
        if charging:
            self.seconds += dt_s
            self.energy_kwh += power_w * dt_s / 3.6e6
        r = "input"
        self.regs[r][100] = CHARGING if charging else SUSPENDED_EVSE
        self.put32(r, 101, round(self.battery_v * 100))
        self.regs[r][103] = round(current * 100)
        self.put32(r, 104, round(power_w))
        self.regs[r][106] = int(self.seconds) & 0xFFFF
        self.regs[r][107] = round(self.energy_kwh * 100)
        self.regs[r][108] = 4000  # 40.00 %
        self.regs[r][109] = 1
        self.put32(r, 110, EV_MAX_W)
        self.put32(r, 112, 0)
