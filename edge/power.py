"""Grid-side vs pack-side power: the one place the station converts between them.

- grid-side: what the station draws from its connection (the grid cap, dispatch limits,
  tariff energy, scheduler grants, `SlotInput.bms_limit_kw` and `charger_rating_kw`);
- pack-side: what reaches the pack (the BMS request BCL current x pack voltage, the charger's
  output ratings, the charger setpoint, the slot controller's power limits).

grid-side x charging efficiency = pack-side. Every figure is converted exactly once, where it
crosses between the slot (pack-side) and the scheduler (grid-side).
"""

from __future__ import annotations


def to_pack_side(grid_kw: float, efficiency: float) -> float:
    """A grid-side power as it reaches the pack."""
    return grid_kw * efficiency


def to_grid_side(pack_kw: float, efficiency: float) -> float:
    """The grid-side power that delivers `pack_kw` to the pack."""
    return pack_kw / efficiency
