"""Power on the right side, judged from the BMS: with its request (BCL) as the only limit, the
current the charger reports in CCS equals the demand. The station has a 600 kW cap, a 60 kW
charger, and a BCP allowing 150 A; the BMS asks 100 A, then 60 A."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge.power import to_grid_side, to_pack_side
from sim.devices.pack import BmsPhase, PackModel, PackSpec
from tests.edge.station_fixtures import mini_config, running_station, wait_for

pytestmark = pytest.mark.timeout(90)


class FixedDemand(PackModel):
    """A pack whose BMS asks a fixed current (well inside every other limit)."""

    demand_a = 100.0

    @property
    def max_current_a(self) -> float:
        return self.demand_a


def test_grid_and_pack_side_are_inverse() -> None:
    assert to_pack_side(to_grid_side(57.0, 0.95), 0.95) == pytest.approx(57.0)
    assert to_pack_side(100.0, 0.95) == pytest.approx(95.0)


async def _settles_at(ccs_current: object, demand_a: float) -> None:
    tol = max(1.0, 0.01 * demand_a)
    assert callable(ccs_current)
    try:
        await wait_for(lambda: abs(ccs_current() - demand_a) <= tol, 20)
    except TimeoutError:
        raise AssertionError(f"CCS {ccs_current()} A never met a demand of {demand_a} A") from None
    # and stays there (sampled for a second of real time, the BMS's view of every CCS)
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        got = ccs_current()
        assert abs(got - demand_a) <= tol, f"CCS {got} A against a demand of {demand_a} A"
        await asyncio.sleep(0.05)


async def test_ccs_current_equals_the_bms_demand(tmp_path: Path) -> None:
    cfg = mini_config(tmp_path, 1)
    text = cfg.read_text()
    assert "cap_kw: 600" in text  # the request must be the only limit
    async with running_station(
        cfg,
        pack_model=lambda spec, speed: FixedDemand(spec, speed=speed),
        pack_spec=lambda i: PackSpec(soc_pct=40.0, serial=1000 + i, max_charge_current_a=150.0),
        speed=1.0,
        coupled=True,  # the charger's output voltage is the pack's, as on a real rack
    ) as w:
        bms = w.packs["s01"].core
        model = bms.model
        assert isinstance(model, FixedDemand)
        rated_kw = w.chargers["ch01"].physics.ratings.max_power_kw
        assert rated_kw == 60.0
        await wait_for(lambda: bms.phase is BmsPhase.CHARGING, 30)

        def ccs() -> float:
            return float(bms.charger_current_a)

        await _settles_at(ccs, 100.0)
        model.demand_a = 60.0
        await _settles_at(ccs, 60.0)
