"""Heidelberg Energy Control wallbox, emulated from its Modbus register table.

Source: Heidelberg, "Energy Control ModBus register table" (EC_ModBus_register_table,
revision 2021-02-22 per its file name), as transcribed in evcc-io/evcc
charger/heidelberg-ec.go (register, table, unit).

Rows used (0-based, 16-bit):
  input 5 charging state (2 A1, 3 A2, 4 B1, 5 B2, 6 C1, 7 C2, 8 D, 9 E, 10 F)
  input 6-8 L1..L3 current, 0.1 A      input 9 PCB temperature, 0.1 degC, signed
  input 10-12 L1..L3 voltage, 1 V      input 14 power, 1 W
  input 17-18 total energy, Wh (32-bit, high word first)
  holding 257 communication timeout, ms   holding 258 standby function control
  holding 259 remote lock                 holding 261 maximal current command, 0.1 A
                                          (0 = no charging, else 60..160)
  holding 262 failsafe current, 0.1 A
"""

from __future__ import annotations

from tests.conformance.vendors.base import VendorEmulator

HOLDING = (257, 258, 259, 261, 262)


class HeidelbergEc(VendorEmulator):
    blocks = {"input": (0, 20), "holding": (257, 6)}

    def __init__(self, unit_id: int = 1) -> None:
        super().__init__(unit_id)
        self.regs["holding"].update({257: 0, 258: 0, 259: 1, 261: 0, 262: 0})
        self.energy_wh = 0.0

    def written(self, table: str, address: int, values: list[int]) -> bool:
        if table != "holding" or any(
            a not in HOLDING for a in range(address, address + len(values))
        ):
            return False
        for i, v in enumerate(values):
            self.regs["holding"][address + i] = v
        return True

    @property
    def limit_da(self) -> int:
        return self.regs["holding"].get(261, 0)

    @property
    def state(self) -> int:
        return self.regs["input"].get(5, 0)

    def step(self, dt_s: float) -> None:
        limit = self.limit_da
        charging = 60 <= limit <= 160 and self.regs["holding"].get(259, 1) == 1
        current_da = limit if charging else 0
        power_w = round(3 * 230 * current_da / 10)
        self.energy_wh += power_w * dt_s / 3600.0
        self.charge(current_da / 10.0, dt_s)
        r = self.regs["input"]
        r[4] = 0x0108  # register layout version
        r[5] = 7 if charging else 5  # C2 charging, else B2
        for i in range(3):
            r[6 + i] = current_da
            r[10 + i] = 230
        r[9] = 253  # 25.3 degC
        r[14] = power_w
        total = round(self.energy_wh)
        r[17], r[18] = total >> 16, total & 0xFFFF
