"""Shared pieces of the scheduler tests: a grid config and a small, fast scenario."""

from __future__ import annotations

from pathlib import Path

from edge.scheduler.config import GridConfig

TAXI_PROFILE = [2, 1, 1, 1, 1, 2, 5, 10, 12, 10, 8, 7, 7, 7, 7, 7, 8, 10, 12, 10, 8, 6, 4, 4]

TARIFF = {
    "currency": "CNY",
    "periods": [
        {"name": "valley", "price_per_kwh": 0.30, "windows": ["22:00-06:00"]},
        {
            "name": "peak",
            "price_per_kwh": 1.20,
            "windows": ["08:00-11:00", "13:00-15:00", "18:00-21:00"],
        },
        {
            "name": "flat",
            "price_per_kwh": 0.70,
            "windows": ["06:00-08:00", "11:00-13:00", "15:00-18:00", "21:00-22:00"],
        },
    ],
}


def grid_config(**over: object) -> GridConfig:
    data: dict[str, object] = {
        "cap_kw": 600,
        "swap_forecast_per_hour": TAXI_PROFILE,
        "tariff": TARIFF,
        "reserve": {"horizon_s": 1800, "margin_packs": 1},
    }
    data.update(over)
    return GridConfig.model_validate(data)


SMALL_SCENARIO = """\
name: small-day
description: four slots, a quarter of the city taxi day's traffic, every kind of event
station:
  slots: 4
  packs: 4
  initial_soc_pct: 95
  charger_rating_kw: 60
  pack:
    capacity_kwh: 70
    charging_efficiency: 0.95
    charging_curve:
      - {soc_pct: 0, power_kw: 60}
      - {soc_pct: 80, power_kw: 60}
      - {soc_pct: 100, power_kw: 10}
grid:
  cap_kw: 150
  ready_soc_pct: 90
  max_soc_pct: 95
  reserve: {horizon_s: 0, margin_packs: 1}
  swap_forecast_per_hour: &swaps [0, 0, 0, 0, 0, 1, 1, 2, 3, 2, 2, 1, 1, 1, 1, 1, 2, 2, 3, 2, 2, 1, 1, 1]
  tariff:
    currency: CNY
    periods:
      - {name: valley, price_per_kwh: 0.30, windows: ["22:00-06:00"]}
      - {name: peak, price_per_kwh: 1.20, windows: ["08:00-11:00", "13:00-15:00", "18:00-21:00"]}
      - name: flat
        price_per_kwh: 0.70
        windows: ["06:00-08:00", "11:00-13:00", "15:00-18:00", "21:00-22:00"]
arrivals:
  swaps_per_hour: *swaps
  soc: {mean_pct: 25, std_pct: 8, min_pct: 5, max_pct: 60}
events:
  - {kind: dispatch_limit, at: "18:00", until: "19:00", power_kw: 60}
  - {kind: derate, at: "12:00", until: "14:00", factor: 0.5, slots: all}
  - {kind: fault, at: "09:00", until: "09:30", slot: 2}
"""


def write_small(tmp_path: Path, text: str = SMALL_SCENARIO) -> Path:
    p = tmp_path / "small-day.yaml"
    p.write_text(text)
    return p
