"""A charger that speaks our generic map, written from docs/modbus.md and
drivers/modbus/maps/charger-generic.yaml only (not from sim/devices/charger.py), and that
checks what the station sends it.

From the map: status in input registers 0-5 (0.1 V; 0.1 A signed; state 0 off, 1 standby,
2 charging, 3 derating, 4 fault; fault bits 0 over_temperature .. 4 watchdog_expired,
5 internal_fault; 0.1 degC; 0.01 kW), input 16-19 "not implemented" (a read touching them is
refused with exception 2), ratings in input 20-22 (0.1 V, 0.1 A, 0.01 kW), control in holding
100-103 (voltage setpoint 0.1 V within 0..1000 V, current limit 0.1 A within 0..500 A, enable,
watchdog heartbeat counter). The watchdog: when the counter does not change within timeout_s
(5 s) the output stops and enable drops (docs/modbus.md).

What it checks (`violations`): reads into the unimplemented bank, setpoints outside the map's
min/max, enable switched on with a zero voltage setpoint or current limit, writes to
read-only or unknown registers, a heartbeat that stalls while the output is on."""

from __future__ import annotations

from tests.conformance.vendors.base import VendorEmulator

TIMEOUT_S = 5.0
RATED_V, RATED_A, RATED_KW = 1000.0, 250.0, 60.0


class GenericPeer(VendorEmulator):
    blocks = {"input": (0, 23), "holding": (100, 4)}

    def __init__(self, unit_id: int = 1) -> None:
        super().__init__(unit_id)
        self.violations: list[str] = []
        self.since_beat_s = 0.0
        self.expired = False
        self.current_a = 0.0
        self.enable_writes: list[tuple[int, int, int]] = []  # (enable, voltage, limit) at the time
        self.regs["holding"].update({100: 0, 101: 0, 102: 0, 103: 0})

    def read_refused(self, table: str, address: int) -> bool:
        if table == "input" and 16 <= address <= 19:
            self.violations.append(f"read of unimplemented input {address}")
            return True
        return False

    def written(self, table: str, address: int, values: list[int]) -> bool:
        if table != "holding":
            self.violations.append(f"write to {table} {address}")
            return False
        for i, v in enumerate(values):
            a = address + i
            h = self.regs["holding"]
            if a == 100 and v > 10_000:
                self.violations.append(f"voltage setpoint {v / 10} V above the map's 1000 V")
            elif a == 101 and v > 5_000:
                self.violations.append(f"current limit {v / 10} A above the map's 500 A")
            elif a == 102:
                if v not in (0, 1):
                    self.violations.append(f"enable written {v}")
                if v == 1 and (h.get(100, 0) == 0 or h.get(101, 0) == 0):
                    self.violations.append("enable before a voltage setpoint and current limit")
                self.enable_writes.append((v, h.get(100, 0), h.get(101, 0)))
                if v == 1:
                    self.expired = False
            elif a == 103:
                if v != h.get(103, 0):
                    self.since_beat_s = 0.0
            elif a not in (100, 101):
                self.violations.append(f"write to unknown holding {a}")
                return False
            h[a] = v & 0xFFFF
        return True

    @property
    def enabled(self) -> bool:
        return self.regs["holding"].get(102, 0) == 1

    def step(self, dt_s: float) -> None:
        h = self.regs["holding"]
        self.since_beat_s += dt_s
        if self.since_beat_s > TIMEOUT_S and self.enabled:
            self.violations.append("heartbeat stalled while the output was on")
            self.expired = True
            h[102] = 0  # the output stops and enable drops
        limit = h.get(101, 0) / 10.0
        target = min(limit, RATED_A, RATED_KW * 1000.0 / self.battery_v) if self.enabled else 0.0
        self.current_a = target
        self.charge(target, dt_s)
        r = self.regs["input"]
        r[0] = round(self.battery_v * 10)
        r[1] = round(self.current_a * 10) & 0xFFFF
        r[2] = 2 if self.current_a > 0 else (1 if not self.expired else 0)
        r[3] = (1 << 4) if self.expired else 0
        r[4] = 300  # 30.0 degC
        r[5] = round(self.battery_v * self.current_a / 10)  # 0.01 kW
        r[20], r[21], r[22] = round(RATED_V * 10), round(RATED_A * 10), round(RATED_KW * 100)
