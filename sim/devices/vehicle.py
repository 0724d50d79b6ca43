"""Simulated vehicles: arrive in the bay with a pack, set the PLC's vehicle inputs, leave."""

from __future__ import annotations

from dataclasses import dataclass

from sim.devices.robot_plc import RobotPlcSim


@dataclass
class SimVehicle:
    plc: RobotPlcSim
    vehicle_id: str
    pack_id: str
    pack_type: str
    soc_pct: float = 20.0

    def arrive(self, *, ready: bool = True) -> None:
        """Drive onto the platform; `ready` = self-check done, HV off and immobilised."""
        self.plc.vehicle_arrives(with_pack=True, ready=ready)

    def self_check(self) -> None:
        self.plc.set_input("vehicle_hv_off", True)
        self.plc.set_input("vehicle_immobilised", True)

    def set_hv_off(self, value: bool) -> None:
        self.plc.set_input("vehicle_hv_off", value)

    def set_immobilised(self, value: bool) -> None:
        self.plc.set_input("vehicle_immobilised", value)

    def depart(self) -> None:
        if not self.plc.released:
            raise RuntimeError("vehicle still clamped: the PLC has not released it")
        self.plc.vehicle_departs()

    def announcement(self) -> dict[str, str]:
        """What the vehicle tells the station (start_swap parameters)."""
        return {
            "vehicle_id": self.vehicle_id,
            "pack_type": self.pack_type,
            "announced_pack_id": self.pack_id,
        }
