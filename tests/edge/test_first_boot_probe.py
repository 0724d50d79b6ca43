"""First boot: with no inventory every slot is probed, and a slot whose BMS stays silent is taken
as empty. Until its probe has ended a slot has not reported whether it holds a pack, so a swap
may not store a pack there (tests/edge/test_swap_core.py checks the choice itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.swap.choice import choose_store_slot
from tests.edge.station_fixtures import mini_config, running_station, wait_for

pytestmark = pytest.mark.timeout(60)


async def test_a_slot_reports_empty_only_once_its_probe_has_ended(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 2), docked={"s01"}) as w:
        empty = w.station.slots["s02"]
        inventory = w.station.swap.coordinator.core.inventory
        await wait_for(lambda: empty.probing, 5)
        view = empty.slot_view(False)
        assert view.pack_id is None and not view.reported
        with pytest.raises(Exception, match="no free slot"):
            choose_store_slot([view], inventory)
        await wait_for(lambda: not empty.probing, 30)  # the BMS stayed silent: empty
        view = empty.slot_view(False)
        assert view.reported and choose_store_slot([view], inventory).slot_id == "s02"
