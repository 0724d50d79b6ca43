"""Slot control core: setpoint arbitration and the safety rules of docs/safety.md (each test fails if
its rule is removed). Reactions must come back in the same call that saw the cause."""

from __future__ import annotations

import pytest

from drivers.can.events import (
    ChargeMode,
    ChargeRequest,
    PackFlags,
    PackIdentified,
    PackLimits,
    PackStatistics,
    PackStatus,
    Phase,
    PhaseChanged,
    SessionStopped,
    StopReason,
    Timeout,
)
from drivers.core.alarm_sink import ClearAlarm, RaiseAlarm
from edge.alarms import CATALOGUE
from edge.slot.config import SafetyConfig
from edge.slot.core import (
    Action,
    BeginSession,
    ChargerRatings,
    ChargerReading,
    FeedWatchdog,
    Quality,
    SessionCommand,
    SessionCommandKind,
    SetChargerOutput,
    SlotCore,
    SlotState,
)

RATINGS = ChargerRatings(
    max_voltage_v=750.0, min_voltage_v=150.0, max_current_a=200.0, max_power_kw=120.0
)
LIMITS = PackLimits(
    max_cell_voltage_v=3.65,
    max_charge_current_a=250.0,
    nominal_energy_kwh=55.0,
    max_charge_voltage_v=410.0,
    max_temperature_c=55,
    soc_pct=40.0,
    voltage_v=370.0,
)
IDENT = PackIdentified(0x101, 3, 150.0, 368.0, "CATL", 7, 2024, 5, 17, 3, False, "", "")


def flags(**kw: object) -> PackFlags:
    base: dict[str, object] = {
        "max_cell_number": 7,
        "max_temperature_c": 30,
        "max_temperature_probe": 3,
        "min_temperature_c": 25,
        "min_temperature_probe": 11,
        "cell_voltage": "normal",
        "soc": "normal",
        "over_current": False,
        "over_temperature": False,
        "insulation_fault": False,
        "connector_fault": False,
        "charge_permitted": True,
    }
    base.update(kw)
    return PackFlags(**base)  # type: ignore[arg-type]


def outputs(acts: list[Action]) -> list[SetChargerOutput]:
    return [a for a in acts if isinstance(a, SetChargerOutput)]


def stops(acts: list[Action]) -> list[SessionCommand]:
    return [a for a in acts if isinstance(a, SessionCommand) and a.kind is SessionCommandKind.STOP]


def raised(acts: list[Action]) -> list[str]:
    return [a.code for a in acts if isinstance(a, RaiseAlarm)]


def charging_core(grant_kw: float = 200.0, safety: SafetyConfig | None = None) -> SlotCore:
    core = SlotCore("slot-1", RATINGS, safety or SafetyConfig())
    core.start(0.0)
    core.set_grant(grant_kw, 0.0)
    for ev in (
        PhaseChanged(Phase.IDLE, Phase.HANDSHAKE),
        IDENT,
        LIMITS,
        PhaseChanged(Phase.PARAMETERS, Phase.CHARGING),
        flags(),
    ):
        core.on_session_event(ev, 0.1)
    core.on_reading(ChargerReading(380.0, 0.0, True), 0.1)
    acts = core.on_session_event(ChargeRequest(400.0, 150.0, ChargeMode.CONSTANT_CURRENT), 0.2)
    assert outputs(acts) == [SetChargerOutput(400.0, 150.0, True)]
    return core


def assert_off_cst_alarm(acts: list[Action], code: str) -> None:
    assert outputs(acts) and outputs(acts)[0].enable is False and outputs(acts)[0].current_a == 0
    assert stops(acts), "CST (session stop) must be requested in the same call"
    assert code in raised(acts)
    assert CATALOGUE[code].component == "slot"


def test_start_sends_cml_limits_then_start() -> None:
    core = SlotCore("s", RATINGS)
    acts = core.start(0.0)
    kinds = [a.kind for a in acts if isinstance(a, SessionCommand)]
    assert kinds == [SessionCommandKind.UPDATE_LIMITS, SessionCommandKind.START]


def test_setpoint_is_min_of_request_limits_ratings_grant_derating() -> None:
    core = charging_core(grant_kw=200.0)
    # Request 300 A: rating 200 A wins.
    acts = core.on_session_event(ChargeRequest(400.0, 300.0, ChargeMode.CONSTANT_CURRENT), 1.0)
    assert outputs(acts) == [SetChargerOutput(400.0, 200.0, True)]
    # Grant 38 kW at 380 V: 100 A.
    acts = core.set_grant(38.0, 1.1)
    assert outputs(acts) == [SetChargerOutput(400.0, 100.0, True)]
    # Derating 0.4: 80 A from the rating.
    core.set_grant(500.0, 1.2)
    acts = core.set_derating(0.4, 1.3)
    assert outputs(acts)[-1] == SetChargerOutput(400.0, 80.0, True)
    cml = [a for a in acts if isinstance(a, SessionCommand) and a.limits is not None]
    assert cml[0].limits is not None and cml[0].limits.max_current_a == 80.0
    core.set_derating(1.0, 1.4)
    # Voltage: the BCP max 410 V caps a 450 V request.
    acts = core.on_session_event(ChargeRequest(450.0, 50.0, ChargeMode.CONSTANT_VOLTAGE), 1.5)
    assert outputs(acts) == [SetChargerOutput(410.0, 50.0, True)]
    # Charger power rating 120 kW at 380 V caps at 315.8 A, BCP 250 A, rating 200 A: 200 A.
    assert core.setpoint() == (410.0, 50.0)


def test_deadband_suppresses_small_changes() -> None:
    core = charging_core()
    assert (
        outputs(
            core.on_session_event(ChargeRequest(400.0, 150.5, ChargeMode.CONSTANT_CURRENT), 1.0)
        )
        == []
    )
    assert outputs(
        core.on_session_event(ChargeRequest(400.0, 152.0, ChargeMode.CONSTANT_CURRENT), 1.0)
    ) == [SetChargerOutput(400.0, 152.0, True)]


def test_pause_disables_and_resume_enables() -> None:
    core = charging_core()
    acts = core.on_session_event(flags(charge_permitted=False), 1.0)
    assert outputs(acts) == [SetChargerOutput(0.0, 0.0, False)]
    assert core.state is SlotState.PAUSED
    acts = core.on_session_event(flags(), 1.25)
    assert outputs(acts) == [SetChargerOutput(400.0, 150.0, True)]


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"over_temperature": True}, "pack.over_temperature"),
        ({"insulation_fault": True}, "pack.fault"),
        ({"connector_fault": True}, "pack.fault"),
        ({"over_current": True}, "pack.fault"),
        ({"cell_voltage": "too_high"}, "pack.cell_voltage"),
        ({"soc": "too_high"}, "pack.fault"),
    ],
)
def test_rule1_abnormal_bsm_flag_output_off_cst_alarm(kw: dict[str, object], code: str) -> None:
    core = charging_core()
    acts = core.on_session_event(flags(**kw), 1.0)
    assert_off_cst_alarm(acts, code)
    assert core.state is SlotState.FAULTED
    # Latched: a new BCL does not re-enable the output.
    acts = core.on_session_event(ChargeRequest(400.0, 150.0, ChargeMode.CONSTANT_CURRENT), 1.05)
    assert outputs(acts) == []


def test_rule1_temperature_out_of_window_without_flag() -> None:
    core = charging_core()
    acts = core.on_session_event(flags(max_temperature_c=56), 1.0)  # BCP max 55 degC
    assert_off_cst_alarm(acts, "pack.over_temperature")
    core = charging_core(safety=SafetyConfig(max_pack_temp_c=45.0))
    acts = core.on_session_event(flags(max_temperature_c=46), 1.0)  # the safety config wins
    assert_off_cst_alarm(acts, "pack.over_temperature")
    core = charging_core()
    acts = core.on_session_event(flags(min_temperature_c=-3), 1.0)  # too cold to charge
    assert_off_cst_alarm(acts, "pack.over_temperature")


def test_rule1_cell_voltage_out_of_window() -> None:
    core = charging_core()
    acts = core.on_session_event(PackStatus(400.0, 150.0, 3.70, 1, 80, 20), 1.0)  # BCP 3.65
    assert_off_cst_alarm(acts, "pack.cell_voltage")
    core = charging_core()
    assert outputs(core.on_session_event(PackStatus(400.0, 150.0, 3.66, 1, 80, 20), 1.0)) == []
    core = charging_core()
    acts = core.on_session_event(PackStatistics(80, 2.3, 3.4, 20, 25), 1.0)
    assert_off_cst_alarm(acts, "pack.cell_voltage")


def test_rule1_bst_with_fault() -> None:
    core = charging_core()
    acts = core.on_session_event(
        SessionStopped(StopReason.BMS_FAULT, "insulation", ("insulation",)), 1.0
    )
    assert outputs(acts) == [SetChargerOutput(0.0, 0.0, False)]
    assert "pack.fault" in raised(acts)
    assert core.state is SlotState.FAULTED
    # The session already answers BST with CST; the core's stop is idempotent.
    assert stops(acts)


def test_rule2_timeout_output_off_then_latch_after_three_rehandshakes() -> None:
    core = charging_core()
    acts = core.on_session_event(Timeout("BCL", Phase.CHARGING, 0, True), 1.0)
    assert outputs(acts) == [SetChargerOutput(0.0, 0.0, False)]
    assert raised(acts) == ["pack.bms_timeout"]
    assert core.state is not SlotState.UNAVAILABLE
    # Re-handshake succeeded: charging again, timeout alarm cleared.
    acts = core.on_session_event(PhaseChanged(Phase.PARAMETERS, Phase.CHARGING), 3.0)
    assert ClearAlarm("pack.bms_timeout", "slot-1") in acts
    for attempt in (1, 2):
        core.on_session_event(Timeout("BCL", Phase.CHARGING, attempt, True), 4.0 + attempt)
    acts = core.on_session_event(Timeout("BCL", Phase.CHARGING, 3, False), 9.0)
    assert "slot.unavailable" in raised(acts)
    assert core.state is SlotState.UNAVAILABLE
    assert core.start(10.0) == []  # latched: no new session
    acts = core.reset_unavailable(11.0)
    assert ClearAlarm("slot.unavailable", "slot-1") in acts
    assert core.start(12.0)


def test_rule2_comm_failed_stop_latches() -> None:
    core = charging_core()
    acts = core.on_session_event(SessionStopped(StopReason.COMM_FAILED, "BCL timeout"), 1.0)
    assert outputs(acts)[0].enable is False
    assert "slot.unavailable" in raised(acts)


def test_rule3_charger_offline_starves_watchdog_cst_latch_until_back_and_off() -> None:
    core = charging_core()
    acts = core.set_charger_online(False, 1.0)
    assert FeedWatchdog(False) in acts
    assert stops(acts) and stops(acts)[0].reason is StopReason.CHARGER_FAULT
    assert {"charger.offline", "slot.unavailable"} <= set(raised(acts))
    assert not outputs(acts)  # an offline charger cannot be written to
    assert core.state is SlotState.UNAVAILABLE
    # Back online but still reporting output on: stay latched.
    acts = core.set_charger_online(True, 2.0)
    acts += core.on_reading(ChargerReading(380.0, 20.0, True), 2.1)
    assert core.state is SlotState.UNAVAILABLE and FeedWatchdog(True) not in acts
    assert core.start(2.2) == []
    # Reports output off: released, watchdog fed again.
    acts = core.on_reading(ChargerReading(380.0, 0.0, False), 2.3)
    assert FeedWatchdog(True) in acts
    assert (
        ClearAlarm("slot.unavailable", "slot-1") in acts
        and ClearAlarm("charger.offline", "slot-1") in acts
    )
    assert core.state is SlotState.EMPTY
    # A stale reading never releases the latch.
    core2 = charging_core()
    core2.set_charger_online(False, 1.0)
    core2.set_charger_online(True, 2.0)
    core2.on_reading(ChargerReading(0.0, 0.0, False, Quality.STALE), 2.1)
    assert core2.state is SlotState.UNAVAILABLE


OFF_READING = ChargerReading(380.0, 0.0, False)


def outage(core: SlotCore) -> list[Action]:
    """The charger goes offline, comes back and reads its output off; the actions of the return."""
    core.set_charger_online(False, 1.0)
    acts = core.set_charger_online(True, 2.0)
    return acts + core.on_reading(OFF_READING, 2.1)


def test_rule3_a_session_cut_short_by_a_charger_outage_begins_again() -> None:
    core = charging_core()
    core.set_charger_online(False, 1.0)
    core.on_session_event(SessionStopped(StopReason.BMS_STOPPED_BY_CHARGER), 1.1)
    core.on_session_event(PhaseChanged(Phase.STOPPING, Phase.ENDED), 1.2)
    acts = core.set_charger_online(True, 2.0)
    assert BeginSession() not in acts  # no reading since it came back
    acts = core.on_reading(OFF_READING, 2.1)
    assert BeginSession() in acts and FeedWatchdog(True) in acts
    assert core.state is SlotState.EMPTY
    acts = core.start(2.2)  # what the service does for a docked pack
    assert SessionCommand(SessionCommandKind.START) in acts


def test_rule3_a_reading_from_before_the_outage_releases_nothing() -> None:
    core = charging_core()
    core.on_reading(OFF_READING, 0.5)
    core.set_charger_online(False, 1.0)
    acts = core.set_charger_online(True, 2.0)
    assert FeedWatchdog(True) not in acts and core.state is SlotState.UNAVAILABLE


def test_rule3_no_new_session_when_none_was_running() -> None:
    core = SlotCore("slot-1", RATINGS)
    acts = outage(core)
    assert FeedWatchdog(True) in acts and BeginSession() not in acts
    assert core.state is SlotState.EMPTY


def test_rule3_a_pack_fault_latch_survives_a_charger_outage() -> None:
    core = charging_core()
    core.on_session_event(flags(max_temperature_c=80), 0.5)
    assert core.state is SlotState.FAULTED
    acts = outage(core)
    assert BeginSession() not in acts and FeedWatchdog(True) in acts
    assert core.state is SlotState.FAULTED
    assert "pack.over_temperature" in core.snapshot(2.2).alarms


def test_rule3_a_pack_fault_during_the_outage_stays_latched() -> None:
    core = charging_core()
    core.set_charger_online(False, 1.0)
    core.on_session_event(SessionStopped(StopReason.BMS_FAULT, faults=("over_temperature",)), 1.1)
    assert core.state is SlotState.UNAVAILABLE
    acts = core.set_charger_online(True, 2.0) + core.on_reading(OFF_READING, 2.1)
    assert BeginSession() not in acts and ClearAlarm("slot.unavailable", "slot-1") in acts
    assert core.state is SlotState.FAULTED


def test_rule3_a_bms_lost_latch_is_left_for_reset_slot() -> None:
    core = charging_core()
    core.on_session_event(SessionStopped(StopReason.COMM_FAILED, "BCL timeout"), 0.5)
    acts = outage(core)
    assert FeedWatchdog(True) in acts and BeginSession() not in acts
    assert core.state is SlotState.UNAVAILABLE
    assert "slot.unavailable" in core.snapshot(2.2).alarms
    assert "charger.offline" not in core.snapshot(2.2).alarms
    core.reset_unavailable(3.0)
    assert core.state is SlotState.EMPTY


def test_rule3_bms_lost_during_the_outage_is_left_for_reset_slot() -> None:
    core = charging_core()
    core.set_charger_online(False, 1.0)
    core.on_session_event(PhaseChanged(Phase.ERROR, Phase.FAILED), 1.1)
    acts = core.set_charger_online(True, 2.0) + core.on_reading(OFF_READING, 2.1)
    assert BeginSession() not in acts and core.state is SlotState.UNAVAILABLE


def test_rule3_a_pack_docked_during_the_outage_starts_once_the_charger_is_back() -> None:
    core = charging_core()
    core.on_session_event(flags(max_temperature_c=80), 0.5)
    core.set_charger_online(False, 1.0)
    assert core.start(1.5) == []  # docked while the charger is away: nothing yet
    acts = core.set_charger_online(True, 2.0) + core.on_reading(OFF_READING, 2.1)
    assert BeginSession() in acts and core.state is SlotState.EMPTY


def test_charger_fault_reading_stops() -> None:
    core = charging_core()
    acts = core.on_reading(ChargerReading(380.0, 0.0, True, fault=True), 1.0)
    assert outputs(acts)[0].enable is False and stops(acts)
    assert "charger.fault" in raised(acts)


def test_measurements_forwarded_only_when_good() -> None:
    core = charging_core()
    acts = core.on_reading(ChargerReading(381.0, 149.0, True, energy_kwh=1.2), 1.0)
    m = [a for a in acts if isinstance(a, SessionCommand) and a.measurements is not None]
    assert m and m[0].measurements is not None and m[0].measurements.current_a == 149.0
    acts = core.on_reading(ChargerReading(0.0, 0.0, True, Quality.INVALID), 1.1)
    assert not [a for a in acts if isinstance(a, SessionCommand) and a.measurements is not None]


def test_leaving_charging_turns_output_off() -> None:
    core = charging_core()
    acts = core.on_session_event(PhaseChanged(Phase.CHARGING, Phase.STOPPING), 1.0)
    assert outputs(acts) == [SetChargerOutput(0.0, 0.0, False)]


def test_snapshot() -> None:
    core = charging_core()
    core.on_session_event(PackStatus(395.0, 150.0, 3.45, 1, 62, 40), 1.0)
    core.on_reading(ChargerReading(395.5, 149.5, True), 1.0)
    snap = core.snapshot(1.5)
    assert snap.pack_id == "CATL-00000007"
    assert snap.soc_pct == 62 and snap.current_a == 149.5 and snap.voltage_v == 395.0
    assert snap.max_cell_voltage_v == 3.45 and snap.max_temperature_c == 30
    assert snap.phase is Phase.CHARGING and snap.output_enabled
    assert snap.heartbeat_age_s == pytest.approx(0.5)


def test_with_real_session_and_sim_pack_over_temperature_within_one_bsm_period() -> None:
    from sim.devices.pack import Fault
    from tests.drivers.can_fixtures import make_wire

    w = make_wire()
    core = SlotCore("slot-1", RATINGS)
    core.start(0.0)
    core.set_grant(100.0, 0.0)
    seen = 0
    actions: list[tuple[float, Action]] = []

    def pump() -> None:
        nonlocal seen
        for t, ev in w.events[seen:]:
            actions.extend((t, a) for a in core.on_session_event(ev, t))
        seen = len(w.events)

    w.do(w.charger.start(w.now))
    w.run_until(3.0, stop=lambda: (pump(), False)[1])
    assert any(isinstance(a, SetChargerOutput) and a.enable for _, a in actions)
    w.bms.inject(Fault.OVER_TEMPERATURE)
    t_inject = w.now
    w.run_until(4.0, stop=lambda: (pump(), False)[1])
    off = [t for t, a in actions if isinstance(a, SetChargerOutput) and not a.enable]
    alarm = [
        t for t, a in actions if isinstance(a, RaiseAlarm) and a.code == "pack.over_temperature"
    ]
    assert off and alarm
    # Detection is the BSM frame (every 250 ms); the reaction leaves in the same call.
    assert off[0] - t_inject <= 0.25 + 0.002 and alarm[0] == off[0]
    assert w.charger.phase in (Phase.STOPPING, Phase.STATISTICS, Phase.ENDED)


def test_every_alarm_code_the_core_uses_is_in_the_catalogue_for_slot() -> None:
    import edge.slot.core as sc

    codes = [v for k, v in vars(sc).items() if k.startswith("A_")]
    assert len(codes) == 8
    for code in codes:
        assert CATALOGUE[code].component == "slot", code


def test_no_enable_without_a_positive_voltage_setpoint() -> None:
    """Issue 12 outcome 9: a 0 kW grant with an unknown pack voltage enabled the output
    (SetChargerOutput(0.0, 90.0, enable=True)). No voltage, no enable; no known voltage, no
    power-limited current."""
    core = SlotCore("slot-1", RATINGS, SafetyConfig())
    core.start(0.0)
    core.set_grant(0.0, 0.0)
    for ev in (PhaseChanged(Phase.PARAMETERS, Phase.CHARGING), flags()):
        core.on_session_event(ev, 0.1)
    acts = core.on_session_event(ChargeRequest(0.0, 90.0, ChargeMode.CONSTANT_CURRENT), 0.2)
    assert not [o for o in outputs(acts) if o.enable]
    core.set_grant(50.0, 0.3)
    acts = core.on_session_event(ChargeRequest(0.0, 90.0, ChargeMode.CONSTANT_CURRENT), 0.4)
    assert not [o for o in outputs(acts) if o.enable]
    assert core.enable_allowed(0.0, 90.0) is False
    assert core.enable_allowed(400.0, 0.0) is False
    assert core.enable_allowed(400.0, 10.0) is True


def test_an_inhibited_slot_is_never_enabled_and_goes_off_at_once() -> None:
    """A slot reserved by a swap, or under an e-stop, never enables; inhibiting a charging slot
    switches it off in the same call, and releasing it lets regulation resume."""
    core = charging_core()
    acts = core.inhibit("reserved", 1.0)
    assert outputs(acts) == [SetChargerOutput(0.0, 0.0, False)]
    acts = core.on_session_event(ChargeRequest(400.0, 150.0, ChargeMode.CONSTANT_CURRENT), 1.1)
    assert not [o for o in outputs(acts) if o.enable]
    acts = core.release("reserved", 1.2)
    assert [o for o in outputs(acts) if o.enable]
