"""Issue 12 item 4: every BMS field is range-checked where it enters (the session boundary).

Safety-relevant values out of the window stop the session with CST (PACK_FAULT); values that are
merely out of range (SOC 0xFF = not supported) are flagged once, dropped and the session goes on.
"""

from __future__ import annotations

import pytest

from drivers.can.events import FieldInvalid, PackStatus, Phase, SessionStopped, StopReason
from sim.devices.pack import Fault
from tests.drivers.can_fixtures import Wire, make_wire


def _charging() -> Wire:
    w = make_wire(soc_pct=50.0)
    w.do(w.charger.start(w.now))
    w.run_until(3.0)
    assert w.charger.phase is Phase.CHARGING
    return w


def test_soc_255_is_flagged_once_dropped_and_the_session_goes_on() -> None:
    w = _charging()
    w.bms.inject(Fault.SOC_UNSUPPORTED)
    w.run_until(8.0)
    invalid = w.of(FieldInvalid)
    assert [(i.message, i.field, i.value) for i in invalid] == [("BCS", "soc_pct", 255.0)]
    assert w.charger.invalid_fields >= 2  # counted each time
    assert w.of(PackStatus)[-1].soc_pct is None
    assert w.charger.phase is Phase.CHARGING
    assert not w.of(SessionStopped)


def test_remaining_time_out_of_range_is_flagged_not_a_stop() -> None:
    w = _charging()
    w.bms.inject(Fault.BAD_REMAINING)
    w.run_until(8.0)
    assert [i.field for i in w.of(FieldInvalid)] == ["remaining_min"]
    assert w.charger.phase is Phase.CHARGING


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        (Fault.HOT_PROBE, "pack_over_temperature"),
        (Fault.CELL_HIGH, "cell_over_voltage"),
        (Fault.PACK_OVER_VOLTAGE, "pack_over_voltage"),
        (Fault.INSULATION, "insulation_fault"),
    ],
)
def test_safety_value_out_of_window_stops_with_cst_fault(fault: Fault, what: str) -> None:
    w = _charging()
    w.bms.inject(fault)
    t0 = w.now
    w.run_until(t0 + 6.0)
    stopped = w.of(SessionStopped)
    assert stopped and stopped[0].reason is StopReason.PACK_FAULT
    assert what in stopped[0].faults or what in stopped[0].detail
    cst = w.frames("CST", True)
    assert cst and cst[0][1].data[0] & 0x10  # CST_FaultStop
