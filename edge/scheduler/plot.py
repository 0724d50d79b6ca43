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
        planned = [(h, s.plan_kw) for h, s in zip(hours, result.samples, strict=True)]
        if any(kw is not None for _, kw in planned):
            # predictive: what the plan in force said for each moment, and every hour the
            # plan's whole horizon as it was then (faint), against what happened.
            ax_p.step(
                [h for h, kw in planned if kw is not None],
                [kw for _, kw in planned if kw is not None],
                where="post",
                color="C1",
                lw=1.0,
                label="plan in force kW",
            )
            for i, (_t, steps) in enumerate(result.plans):
                ax_p.step(
                    [e / 3600 for e, _ in steps],
                    [kw for _, kw in steps],
                    where="pre",
                    color="C4",
                    alpha=0.25,
                    lw=0.8,
                    label="hourly plans' horizon kW" if i == 0 else None,
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
