"""Which full pack a vehicle gets, and which free slot takes its depleted pack. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.swap.inventory import Inventory, SlotPlace
from edge.swap.steps import PackChoice


@dataclass(frozen=True, slots=True)
class SlotView:
    """What the slot controller knows of a rack slot when a swap is asked for."""

    slot_id: str
    pack_id: str | None = None
    pack_type: str | None = None
    soc_pct: float = 0.0
    soh_pct: float = 100.0
    temperature_c: float = 25.0
    cycles: int = 0
    session_ended: bool = True  # no charging session running (or it has ended)
    output_off: bool = True  # charger output confirmed off
    alarm_active: bool = False  # any active alarm on this slot
    available: bool = True  # not latched unavailable
    reported: bool = True  # the slot has said whether it holds a pack (start-up probe over)


class NoPackError(Exception):
    """No slot qualifies; the message says why for each slot."""


def _refusal(v: SlotView, pack_type: str, policy: PackChoice, inv: Inventory) -> str | None:
    if v.pack_id is None:
        return "empty"
    rec = inv.at(SlotPlace(v.slot_id))
    if rec is None or rec.pack_id != v.pack_id:
        return f"inventory has {rec.pack_id if rec else 'no pack'}, slot reports {v.pack_id}"
    if v.pack_type != pack_type:
        return f"type {v.pack_type} is not {pack_type}"
    if not v.available:
        return "slot unavailable"
    if v.alarm_active:
        return "alarm active"
    if not v.session_ended:
        return "charging session not ended"
    if not v.output_off:
        return "charger output not off"
    if v.soc_pct < policy.soc_min_pct:
        return f"SOC {v.soc_pct:g}% < {policy.soc_min_pct:g}%"
    if v.soh_pct < policy.soh_min_pct:
        return f"SOH {v.soh_pct:g}% < {policy.soh_min_pct:g}%"
    if not policy.temperature_min_c <= v.temperature_c <= policy.temperature_max_c:
        return f"temperature {v.temperature_c:g} degC out of range"
    return None


def within_handover_window(v: SlotView, policy: PackChoice) -> bool:
    """Temperature and health allow handing this pack over (its SOC aside): what the scheduler
    counts as reserve."""
    return (
        v.soh_pct >= policy.soh_min_pct
        and policy.temperature_min_c <= v.temperature_c <= policy.temperature_max_c
    )


def choose_pack(
    slots: Sequence[SlotView], pack_type: str, policy: PackChoice, inv: Inventory
) -> SlotView:
    """Highest SOC, then fewest cycles, then slot id. Raises NoPackError with the reasons."""
    ok: list[SlotView] = []
    why: list[str] = []
    for v in slots:
        r = _refusal(v, pack_type, policy, inv)
        if r is None:
            ok.append(v)
        elif r != "empty":
            why.append(f"{v.slot_id}: {r}")
    if not ok:
        detail = "; ".join(why) if why else "rack holds no pack"
        raise NoPackError(f"no {pack_type} pack qualifies ({detail})")
    return sorted(ok, key=lambda v: (-v.soc_pct, v.cycles, v.slot_id))[0]


def choose_store_slot(slots: Sequence[SlotView], inv: Inventory) -> SlotView:
    """A free slot for the depleted pack: empty in the inventory and by its own report. A slot
    still probing at first boot has not reported: a pack stored there before its probe ended
    was taken for "empty at start-up" and undocked, and the swap never completed."""
    for v in sorted(slots, key=lambda v: v.slot_id):
        if (
            v.reported
            and v.pack_id is None
            and inv.at(SlotPlace(v.slot_id)) is None
            and v.available
            and not v.alarm_active
            and v.output_off
        ):
            return v
    raise NoPackError("no free slot for the depleted pack")
