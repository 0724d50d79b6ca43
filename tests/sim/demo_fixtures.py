"""Realistic telemetry and event payloads (field names of edge/telemetry/models.py) for the view."""

from __future__ import annotations

from typing import Any

ROOT = "swapstation/v1/demo-01"
TS = "2026-11-25T23:10:00.250Z"


def station() -> dict[str, Any]:
    return {
        "grid_power_kw": 412.5,
        "grid_cap_kw": 600.0,
        "grid_limit_kw": 550.0,
        "remote_limit_kw": None,
        "remote_limit_valid_until": None,
        "operating_mode": "normal",
        "grid_mode": "charge",
        "grid_reason": "valley tariff",
        "tariff_period": "valley",
        "packs_total": 12,
        "packs_full": 5,
        "packs_charging": 6,
        "packs_unavailable": 1,
        "active_alarms": [
            {
                "code": "slot.charger_offline",
                "source": "s07",
                "severity": "major",
                "raised_at": "2026-11-25T23:09:58Z",
            }
        ],
        "ts": TS,
    }


def slot(slot_id: str, soc: float, power_kw: float, phase: str = "charging") -> dict[str, Any]:
    return {
        "slot_id": slot_id,
        "pack_id": f"PK-{slot_id.upper()}-0042",
        "soc_pct": soc,
        "voltage_v": 612.4,
        "current_a": power_kw * 1000 / 612.4,
        "power_kw": power_kw,
        "temp_max_c": 31.0,
        "temp_min_c": 24.0,
        "session_phase": phase,
        "charger_state": "running" if phase == "charging" else "standby",
        "available": True,
        "quality": "good",
        "ts": TS,
    }


def robot() -> dict[str, Any]:
    return {
        "sequence_state": "running",
        "swap_id": "sw-0007",
        "step": "unlock",
        "axes_mm": {"vehicle": 300.0, "rack": 1200.0},
        "interlocks": {
            "estop_chain_healthy": True,
            "doors_closed": True,
            "light_curtain_clear": True,
            "vehicle_hv_off": True,
            "vehicle_immobilised": True,
        },
        "quality": "good",
        "ts": TS,
    }


def event(event_type: str, seq: int, **details: Any) -> dict[str, Any]:
    return {
        "msg_id": f"a1b2c3:{seq}",
        "type": event_type,
        "ts": TS,
        "replayed": False,
        "details": details,
    }


def feed() -> list[tuple[str, dict[str, Any]]]:
    """A station mid-swap: status, station, 12 slots, robot, a run of events."""
    out: list[tuple[str, dict[str, Any]]] = [
        (f"{ROOT}/status", {"online": True, "boot_id": "a1b2c3", "version": "0.1.0", "ts": TS}),
        (f"{ROOT}/telemetry/station", station()),
    ]
    for i in range(1, 13):
        sid = f"s{i:02d}"
        phase = "charging" if i <= 6 else "idle"
        out.append(
            (f"{ROOT}/telemetry/slot/{sid}", slot(sid, 8.0 * i, 45.0 if i <= 6 else 0.0, phase))
        )
    out.append((f"{ROOT}/telemetry/robot", robot()))
    events = [
        event("charge.started", 1, slot_id="s03", pack_id="PK-S03-0042"),
        event("swap.started", 2, swap_id="sw-0007", vehicle_id="TAXI-88", pack_type="std-60"),
        event("swap.step", 3, swap_id="sw-0007", step="position", state="done"),
        event("swap.step", 4, swap_id="sw-0007", step="fetch", state="started"),
        event("swap.step", 5, swap_id="sw-0007", step="unlock", state="started"),
        event(
            "alarm.raised",
            6,
            code="slot.charger_offline",
            source="s07",
            severity="major",
            text="charger ch07 not answering",
            raised_at="2026-11-25T23:09:58Z",
        ),
    ]
    out += [(f"{ROOT}/event/{e['type'].replace('.', '/')}", e) for e in events]
    return out
