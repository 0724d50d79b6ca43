"""The swap core's status view: what `swapd ctl swap status`, MQTT and the live view show."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from edge.swap.sequence import SwapSequence


def status_view(core: SwapSequence) -> dict[str, Any]:
    sw = core.swap
    return {
        "mode": core.mode.value,
        "latched": core.latched,
        "halted": sorted(core.halted),
        "plc_online": core.plc_online,
        "inputs": dict(core.plc.inputs) if core.plc else {},
        "units": {
            u: {
                "state": s.state.name.lower(),
                "step": core.graph.contract.step_name(u, s.step_code),
                "ack_seq": s.ack_seq,
                "fault": core.graph.contract.fault_name(s.fault_code) if s.fault_code else None,
                "position_mm": s.position_mm,
            }
            for u, s in (core.plc.units.items() if core.plc else [])
        },
        "swap": None
        if sw is None
        else {
            "swap_id": sw.swap_id,
            "kind": sw.kind,
            "vehicle_id": sw.vehicle_id,
            "announced_pack_id": sw.announced_pack_id,
            "full_pack_id": sw.full_pack_id,
            "full_slot": sw.full_slot,
            "store_slot": sw.store_slot,
            "hold": None if sw.hold is None else asdict(sw.hold),
            "blocked": sw.blocked,
            "steps": {
                s: {
                    "status": sw.runs[s].status.value,
                    "seq": sw.runs[s].seq,
                    "attempts": sw.runs[s].attempts,
                }
                for s in sw.plan
            },
        },
        "inventory": core.inventory.to_json(),
        "alarms": [{"code": c, "source": s} for c, s in sorted(core.alarms)],
        "reserved_slots": sorted(core.reserved_slots()),
    }
