"""`simulate-day --plot`: grid power, tariff and ready packs over the day (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from edge.scheduler.scenario import Scenario
from edge.scheduler.simday import DayResult


def plot_day(result: DayResult, scenario: Scenario, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [s.t_s / 3600 for s in result.samples]
    fig, (ax_p, ax_t, ax_r) = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
    try:
        ax_p.step(hours, [s.grid_kw for s in result.samples], where="post", label="grid kW")
        ax_p.step(
            hours, [s.limit_kw for s in result.samples], where="post", ls="--", label="limit kW"
        )
        ax_p.set_ylabel("kW (grid-side)")
        ax_p.legend(loc="upper right")
        ax_t.step(hours, [s.price_per_kwh for s in result.samples], where="post", color="C2")
        ax_t.set_ylabel(f"{scenario.grid.tariff.currency}/kWh")
        ax_r.step(hours, [s.ready_packs for s in result.samples], where="post", color="C3")
        ax_r.set_ylabel(f"packs >= {scenario.grid.ready_soc_pct:g} %")
        ax_r.set_xlabel("hour of day")
        ax_r.set_xlim(0, 24)
        k = result.kpis
        fig.suptitle(
            f"{scenario.name} / {k['policy']} (seed {k['seed']}): cost {k['energy_cost']} "
            f"{k['currency']}, waits {k['swaps_waited']}, "
            f"peak-period {k['peak_period_energy_kwh']} kWh"
        )
        fig.tight_layout()
        fig.savefig(str(path), dpi=90)
    finally:
        plt.close(fig)
