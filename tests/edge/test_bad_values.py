"""Issue 12 outcome 4 / item 4: bad values from one device never stop the station.

Before: one pack reporting SOC 255 (BCS byte 0xFF) made the slot telemetry model raise inside
the publisher (a core service), so the daemon stopped and restart-looped while the pack repeated
it. Now the session drops the value (FieldInvalid, counted, alarmed once) and the publisher
publishes whatever does not fit its model as null with quality bad.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from edge.slot.core import SlotState
from edge.telemetry.fit import fit, invalid_counts
from edge.telemetry.models import SlotTelemetry
from sim.devices.pack import Fault
from tests.edge.station_fixtures import mini_config, running_station, wait_for

pytestmark = pytest.mark.timeout(90)


def test_fit_nulls_a_field_that_does_not_fit_and_flags_it() -> None:
    before = invalid_counts["SlotTelemetry.soc_pct"]
    msg = fit(SlotTelemetry, {"soc_pct": 255, "session_phase": "charging", "charger_state": "on"})
    assert msg is not None
    assert msg.soc_pct is None and msg.quality == "bad" and msg.invalid == ["soc_pct"]
    assert invalid_counts["SlotTelemetry.soc_pct"] == before + 1
    # A required field that does not fit: the update is dropped, never raised.
    assert fit(SlotTelemetry, {"session_phase": 3.5j, "charger_state": "on"}) is None


async def test_pack_soc_255_never_stops_the_station(tmp_path: Path) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        st = w.station
        slot = st.slots["s01"]
        await wait_for(lambda: bool(w.chargers["ch01"].get("enable")))
        run = next(t for t in asyncio.all_tasks() if t.get_name() == "station")
        w.packs["s01"].inject(Fault.SOC_UNSUPPORTED)
        await wait_for(lambda: st.alarms.is_active("pack.invalid_value", "s01"), 5)
        published = st.publisher.publishes
        await wait_for(lambda: st.publisher.publishes > published + 5, 10)
        assert not run.done()
        assert slot.core.state is SlotState.CHARGING
        assert bool(w.chargers["ch01"].get("enable"))
        assert slot.link.session.invalid_fields > 1  # counted every time, alarmed once


async def test_a_snapshot_value_outside_the_model_is_published_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        st = w.station
        slot = st.slots["s01"]
        await wait_for(lambda: slot.snapshot().soc_pct is not None)
        real = slot.snapshot
        monkeypatch.setattr(slot, "snapshot", lambda: dataclasses.replace(real(), soc_pct=255.0))
        run = next(t for t in asyncio.all_tasks() if t.get_name() == "station")
        st.publisher.slot_changed("s01")
        st.publisher.publish()  # raised ValidationError before
        current = st.telemetry._tracker.current("slot/s01")
        assert current["soc_pct"] is None and current["quality"] == "bad"
        assert current["invalid"] == ["soc_pct"]
        await asyncio.sleep(0.5)
        assert not run.done()
