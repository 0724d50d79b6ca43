"""ABB Terra AC wallbox, emulated from its Modbus TCP register table.

Source: ABB E-mobility, "Terra AC wallbox Modbus communication" (register table, holding
registers 0x4000-0x401F read-only and 0x4100-0x4105 write-only), as transcribed register by
register in evcc-io/evcc charger/abb.go (address, name, registers, unit, RO/WO). The revision
of the document is not stated in that transcription.

Rows used (0-based holding addresses, 32-bit values high word first):
  0x4006 max rated current, 2 regs, 0.001 A, RO      0x4008 error code, 2 regs, RO
  0x400A socket lock state, 2 regs, RO               0x400C charging state, 2 regs, RO:
         the state is bits 0-6 of the high byte of 0x400D (0 A idle, 1 B1, 2 B2, 3 C1,
         4 C2 charging, 5 other)
  0x400E current charging current limit, 2 regs, 0.001 A, RO (the limit in force)
  0x4010 charging current L1..L3, 6 regs, 0.001 A, RO
  0x4016 voltage L1..L3, 6 regs, 0.1 V, RO            0x401C active power, 2 regs, 1 W, RO
  0x401E energy delivered in the session, 2 regs, 1 Wh, RO
  0x4100 set charging current limit, 2 regs, 0.001 A, WO (0 pauses the charge)
  0x4105 start/stop charging session, 1 reg, WO
Reading a write-only register answers exception 2 (illegal data address).
"""

from __future__ import annotations

from tests.conformance.vendors.base import VendorEmulator

MAX_RATED_MA = 32_000
MIN_CHARGE_MA = 6_000  # IEC 61851: below 6 A the EV may not draw
STATE_B2, STATE_C2 = 2, 4


class AbbTerraAc(VendorEmulator):
    blocks = {"holding": (0x4000, 0x0106)}

    def __init__(self, unit_id: int = 1) -> None:
        super().__init__(unit_id)
        self.limit_ma = 0  # accepted by the last write to 0x4100
        self.error_code = 0
        self.put32("holding", 0x4006, MAX_RATED_MA)
        self.put32("holding", 0x400A, 0x0101)  # cable locked in socket and vehicle
        self.energy_wh = 0.0

    def read_refused(self, table: str, address: int) -> bool:
        return address >= 0x4100  # the write-only block

    def written(self, table: str, address: int, values: list[int]) -> bool:
        if table != "holding":
            return False
        if address == 0x4100 and len(values) == 2:
            self.limit_ma = min(MAX_RATED_MA, (values[0] << 16) | values[1])
            return True
        return address == 0x4105 and len(values) == 1

    @property
    def state(self) -> int:
        return (self.regs["holding"].get(0x400D, 0) >> 8) & 0x7F

    @property
    def current_a(self) -> float:
        return self.get32("holding", 0x4010) / 1000.0

    def step(self, dt_s: float) -> None:
        charging = self.limit_ma >= MIN_CHARGE_MA and self.error_code == 0
        current_ma = self.limit_ma if charging else 0
        volts_dv = 2300  # 230.0 V per phase
        power_w = round(3 * 230.0 * current_ma / 1000.0)
        self.energy_wh += power_w * dt_s / 3600.0
        self.charge(current_ma / 1000.0, dt_s)
        h = "holding"
        self.put32(h, 0x4008, self.error_code)
        self.regs[h][0x400C] = 0
        self.regs[h][0x400D] = ((STATE_C2 if charging else STATE_B2) << 8) | 0x00
        self.put32(h, 0x400E, self.limit_ma)
        for i in range(3):
            self.put32(h, 0x4010 + 2 * i, current_ma)
            self.put32(h, 0x4016 + 2 * i, volts_dv)
        self.put32(h, 0x401C, power_w)
        self.put32(h, 0x401E, round(self.energy_wh))
