"""Each fail-safe seam of issue 12 is load-bearing (docs/safety.md, "Seams and their mutation
tests"). With one seam put back to the unsafe behaviour (monkeypatch on our own code, never
pymodbus, python-can or aiomqtt), the existing safety test for it must fail, and the hazard must
show on the simulated device itself: charger registers and physics, the PLC's halt bits and
steps. Where the existing test fires on the daemon's view first (an alarm, a flag), or its
scenario hides the hazard behind another layer (a charger that ignores writes also ignores its
watchdog feed, so it stops itself), a device scenario here shows the hazard instead: with every
seam in place it is clean, with the seam disabled the device shows it."""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _pytest.outcomes import Failed

from drivers.modbus.device import ModbusDevice
from drivers.modbus.errors import ModbusError
from edge.app import station as station_module
from edge.app.station import SwapRunner
from edge.app.supervisor import Supervisor, Task
from edge.slot.core import SlotCore
from edge.slot.service import SlotService
from edge.swap.coordinator import SwapCoordinator
from edge.swap.inventory import SlotPlace
from edge.swap.sequence import SwapSequence
from sim.devices.pack import Fault
from tests.edge import station_fixtures
from tests.edge import test_failsafe_outputs as outputs
from tests.edge import test_slot_core as slot_core
from tests.edge import test_swap_core as swap_core
from tests.edge import test_swap_plc_confirms as plc_confirms
from tests.edge.station_fixtures import mini_config, running_station, wait_for
from tests.edge.swap_fixtures import CoreRig

pytestmark = pytest.mark.timeout(120)

LIVE_A = outputs.OFF_A
STOPS_S = 8.0  # the charger's own watchdog (5 s) after a starved feed, plus the confirm wait


# ---- running an existing test -------------------------------------


@dataclass(frozen=True)
class Broken:
    """How the existing test failed: the exception and its own source line that fired."""

    kind: str
    line: str

    def __str__(self) -> str:
        return f"{self.kind} at `{self.line}`"


def broken_sync(test: Callable[[], None]) -> Broken | None:
    try:
        test()
    except AssertionError as e:
        return Broken(type(e).__name__, _failing_line(test, e))
    return None


def _failing_line(test: Callable[..., Any], exc: BaseException) -> str:
    """The statement of the test body that fired (all its lines)."""
    src = inspect.getsourcefile(test)
    lines, first = inspect.getsourcelines(test)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == src and frame.name == test.__name__ and frame.lineno is not None:
            end = frame.end_lineno or frame.lineno
            return " ".join(ln.strip() for ln in lines[frame.lineno - first : end - first + 1])
    return "<outside the test body>"


async def broken(test: Callable[..., Any], *args: Any) -> Broken | None:
    """Run one existing test in this process: None if it passed, else where it fired."""
    try:
        result = test(*args)
        if isinstance(result, Awaitable):
            await result
    except (AssertionError, TimeoutError, Failed) as e:
        return Broken(type(e).__name__, _failing_line(test, e))
    return None


# ---- device scenarios ------------------------------------------------------------------------


async def _stops_itself(sim: Any) -> str | None:
    """None once the charger is off by its own watchdog; else what it still does."""
    try:
        await wait_for(lambda: sim.watchdog_expired and outputs.delivering(sim) <= LIVE_A, STOPS_S)
    except TimeoutError:
        return (
            f"still delivers {outputs.delivering(sim):.0f} A {STOPS_S:g} s later, "
            f"watchdog fed (expired={sim.watchdog_expired})"
        )
    return None


async def device_scenarios(tmp_path: Path, which: set[str]) -> dict[str, str]:
    """Faults a charger cannot hide from its own watchdog only if the station starves it:
    - `stuck`: ch01's power stage ignores its setpoints (written and read back), then its pack
      over-heats: the off is never confirmed by a read, so the watchdog must be starved;
    - `reads`: ch02 answers every read with exception 4 while writes (the feed too) are applied:
      no good answer is offline, so the watchdog must be starved.
    Returns the hazard per scenario, judged from the charger's own state."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        ch01, ch02 = w.chargers["ch01"], w.chargers["ch02"]
        await outputs.charging(w, "s01", "ch01")
        await outputs.charging(w, "s02", "ch02")
        if "stuck" in which:
            ch01.apply_fault("stuck_output", True)
            w.packs["s01"].inject(Fault.OVER_TEMPERATURE)
        if "reads" in which:
            ch02.apply_fault("read_exception", True, 4)
        found = {
            "stuck": await _stops_itself(ch01) if "stuck" in which else None,
            "reads": await _stops_itself(ch02) if "reads" in which else None,
        }
        return {k: v for k, v in found.items() if v is not None}


async def test_the_device_scenarios_are_clean_with_every_seam_in_place(tmp_path: Path) -> None:
    assert await device_scenarios(tmp_path, {"stuck", "reads"}) == {}


# ---- item 1: output off is a held state -----------------------------------------------------


async def test_write_output_counting_a_refused_write_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SlotService.write_output` lets a request count as done though a write of it failed (the
    old writer marked it done before writing): the current reduction never reaches the charger."""
    real = SlotService.write_output
    writes: list[str] = []  # what the writer carried out: shown if the test still passes

    async def done_though_refused(self: SlotService, out: Any) -> None:
        try:
            await real(self, out)
            writes.append(f"{out}: written")
        except ModbusError as e:
            writes.append(f"{out}: refused ({e}), counted as done")

    monkeypatch.setattr(SlotService, "write_output", done_though_refused)
    b = await broken(
        outputs.test_a_refused_voltage_write_does_not_lose_a_later_current_reduction, tmp_path
    )
    # the charger's register
    assert b is not None and 'sim.get("current_limit_a")' in b.line, (b, writes)


async def test_off_confirmed_by_believing_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SlotService.off_confirmed_by` confirms without a read that shows the output off (the
    acknowledged write is taken for the result). The existing test fires on `output_off`
    returning; its charger (ignoring writes, the feed too) stops itself. A stuck power stage
    whose registers read back "off" stays on, fed."""
    monkeypatch.setattr(SlotService, "off_confirmed_by", lambda self, snap, since: True)
    b = await broken(
        outputs.test_output_off_confirmation_needs_a_read_taken_after_the_command,
        tmp_path / "existing",
    )
    assert b is not None, "the safety test still passes with the seam disabled"
    hazards = await device_scenarios(tmp_path / "device", {"stuck"})
    assert "watchdog fed" in hazards.get("stuck", ""), hazards


async def test_off_unconfirmed_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`SlotService.off_unconfirmed` does nothing (the watchdog stays fed, no alarm). The
    existing test fires on the watchdog flag; a stuck power stage stays on, fed."""
    monkeypatch.setattr(SlotService, "off_unconfirmed", lambda self, why: None)
    b = await broken(
        outputs.test_output_off_confirmation_needs_a_read_taken_after_the_command,
        tmp_path / "existing",
    )
    assert b is not None, "the safety test still passes with the seam disabled"
    hazards = await device_scenarios(tmp_path / "device", {"stuck"})
    assert "watchdog fed" in hazards.get("stuck", ""), hazards


# ---- item 2: liveness by good answers -------------------------------------------------------


async def test_good_cycle_counting_exception_cycles_as_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ModbusDevice.good_cycle` counts a cycle of exceptions as an answer. The existing test
    (exceptions on every request) fires on the alarm; its charger then stops by its own watchdog
    because the feed is refused too. With reads failing and writes applied, the charger is fed
    and stays on."""
    monkeypatch.setattr(ModbusDevice, "good_cycle", lambda self, fresh: True)
    b = await broken(
        outputs.test_a_charger_answering_only_exceptions_goes_offline_and_its_output_stops,
        tmp_path / "existing",
    )
    assert b is not None, "the safety test still passes with the seam disabled"
    hazards = await device_scenarios(tmp_path / "device", {"reads"})
    assert "watchdog fed" in hazards.get("reads", ""), hazards


# ---- item 7: no enable without a positive voltage setpoint ----------------------------------


async def test_enable_allowed_allowing_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SlotCore.enable_allowed` always true: the core sends the charger an enable with no
    voltage or current setpoint (its output command is what the charger gets)."""
    monkeypatch.setattr(SlotCore, "enable_allowed", staticmethod(lambda v, c: True))
    b = await broken(slot_core.test_no_enable_without_a_positive_voltage_setpoint)
    assert b is not None and "outputs(acts)" in b.line, b


async def test_modbus_service_without_fail_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Modbus network service's fail-safe (`modbus_service`: every device stops feeding and
    forgets its wanted setpoints, every slot is held off until a fresh read confirms it) does
    nothing: the restarted network feeds the chargers and replays their setpoints, and the
    charger is never seen off."""
    monkeypatch.setattr(
        station_module, "modbus_service", lambda network, slots: Task("modbus", network.run)
    )
    b = await broken(
        outputs.test_a_crashing_modbus_service_does_not_replay_the_wanted_output, tmp_path
    )
    assert b is not None and "seen_off" in b.line, b  # sampled from the charger's registers


# ---- item 3: a reserved slot is never energised ---------------------------------------------


def test_consume_off_confirmations_keeping_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SwapSequence.consume_off_confirmations` keeps a slot's output-off confirmation after a
    step touched the slot: the refit puts the pack back into its slot on the confirmation taken
    before the fetch, and the PLC is sent into a slot nobody checked since."""
    monkeypatch.setattr(SwapSequence, "consume_off_confirmations", lambda self, st: None)
    b = broken_sync(swap_core.test_a_step_back_into_a_slot_needs_a_fresh_output_off)
    assert b is not None and "rig.commanded()" in b.line, b  # the PLC's own commands


async def test_inhibit_ignoring_the_swap_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SlotCore.inhibit` ignores the swap's reservation: a charging slot the swap reserved is
    not switched off, and the core keeps sending the charger enables."""
    real = SlotCore.inhibit

    def not_reserved(self: SlotCore, reason: str, now: float) -> list[Any]:
        return [] if reason == "reserved" else real(self, reason, now)

    monkeypatch.setattr(SlotCore, "inhibit", not_reserved)
    b = broken_sync(slot_core.test_an_inhibited_slot_is_never_enabled_and_goes_off_at_once)
    assert b is not None and "outputs(acts)" in b.line, b


async def test_dock_known_packs_docking_the_reserved_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SwapRunner.dock_known_packs` docks every slot holding a pack, the swap's reserved one
    included (the old start-up). Judged on the daemon's view only (docs/safety.md): the
    restored swap inhibits the reserved slot again before its session reaches charging, so ch01
    is not switched on in this scenario."""

    def dock_every_pack(self: SwapRunner, slots: dict[str, SlotService]) -> None:
        inv = self.room.coordinator.core.inventory
        for slot_id, slot in slots.items():
            if inv.at(SlotPlace(slot_id)) is not None:
                slot.dock()

    monkeypatch.setattr(SwapRunner, "dock_known_packs", dock_every_pack)
    b = await broken(outputs.test_restart_mid_swap_never_energises_the_reserved_slot, tmp_path)
    assert b is not None and "docked" in b.line, b


async def _restart_with_the_charger_still_on(tmp_path: Path) -> str | None:
    """The daemon restarts mid-swap within the charger's own watchdog (5 s): ch01, under the
    swap's fetch, still delivers what the killed daemon set, and its power stage does not follow
    the off write (`stuck_output`; only its watchdog cuts it). Returns a rack step that started
    on slot 1 while ch01 delivered, judged from the PLC's step and ch01's physics."""
    outputs.journal_with_swap_in_flight(tmp_path / "state")
    real = station_fixtures.run_charger_sims

    @contextlib.asynccontextmanager
    async def left_on(*a: Any, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        async with real(*a, **kw) as sims:
            ch01 = sims["ch01"]
            ch01.physics.voltage_setpoint_v = 380.0
            ch01.physics.current_limit_a = 100.0
            ch01.physics.enabled = True
            ch01.physics.output_current_a = 100.0  # delivering already, not ramping up
            # Fed by the daemon just killed, 2 s ago: its watchdog cuts it ~3 s into the restart,
            # inside the swap's 5 s wait for the off (equal bounds made the outcome a race).
            ch01._wd_fed_at = ch01._clock.monotonic() - 2.0
            ch01.apply_fault("stuck_output", True)
            yield sims

    found: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(station_fixtures, "run_charger_sims", left_on)
        cfg = mini_config(tmp_path, 2)
        async with running_station(cfg, soc_pct=40.0, docked={"s01"}) as w:
            ch01 = w.chargers["ch01"]

            def step(m: Any) -> None:
                if m.unit == "rack" and m.arg == 1 and outputs.delivering(ch01) > LIVE_A:
                    found.append(
                        f"rack {m.step} on slot 1 with ch01 at {outputs.delivering(ch01):.0f} A"
                    )

            w.plc.step_observers.append(step)
            await wait_for(lambda: bool(found) or any(m.unit == "rack" for m in w.plc.motions), 15)
    return found[0] if found else None


async def test_a_restart_with_the_charger_still_on_waits_for_it(tmp_path: Path) -> None:
    assert await _restart_with_the_charger_still_on(tmp_path) is None


async def test_resume_trusting_the_journalled_outputs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SwapSequence.resume` keeps the journalled `outputs_off` instead of confirming both slots
    afresh. Judged on the daemon's view only (docs/safety.md): the step active at the restart
    is held by `resend_confirmed`, and the reserved slots are held off from start-up."""
    real = SwapSequence.resume

    def trusting(self: SwapSequence, now: float) -> list[Any]:
        sw = self.swap
        kept = set(sw.outputs_off) if sw is not None else set()
        out = real(self, now)
        if sw is not None:
            sw.outputs_off |= kept
            sw.off_requested.clear()
        return [a for a in out if type(a).__name__ != "RequestOutputOff"]

    monkeypatch.setattr(SwapSequence, "resume", trusting)
    b = await broken(outputs.test_restart_mid_swap_never_energises_the_reserved_slot, tmp_path)
    assert b is not None and "confirmed ==" in b.line, b


async def test_resend_confirmed_resending_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SwapSequence.resend_confirmed` always true (before it existed): the fetch active at the
    restart is resent on the first PLC status, and the rack fetches from slot 1 while ch01 still
    delivers."""
    monkeypatch.setattr(SwapSequence, "resend_confirmed", lambda self, sw, sid, run: True)
    hazard = await _restart_with_the_charger_still_on(tmp_path)
    assert hazard is not None and "rack fetch on slot 1" in hazard, hazard


# ---- item 5: e-stop first, bookkeeping after ------------------------------------------------


async def test_safety_first_after_the_journal_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SwapCoordinator.safety_first` does nothing: the halt waits for the (stalled) fsync."""

    async def after_the_commit(self: SwapCoordinator, actions: list[Any]) -> set[int]:
        return set()

    monkeypatch.setattr(SwapCoordinator, "safety_first", after_the_commit)
    b = await broken(
        outputs.test_estop_halts_and_switches_off_before_the_journal_is_written, tmp_path
    )
    assert b is not None and "w.plc.halt_bits" in b.line, b  # the PLC's own halt register


# ---- item 2: a frozen or stale PLC halts the units ------------------------------------------


def _recording_rigs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    rigs: list[Any] = []

    class Rig(CoreRig):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            rigs.append(self)

    monkeypatch.setattr(swap_core, "CoreRig", Rig)
    return rigs


def _plc_not_halted(rigs: list[Any]) -> list[str]:
    """Judged from the simulated PLC's own halt register, after the test fired."""
    return [f"PLC halt bits {sorted(r.sim.halt_bits)}" for r in rigs if len(r.sim.halt_bits) < 2]


async def test_heartbeat_frozen_never_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SwapSequence.heartbeat_frozen` always false: on a frozen PLC image the units run on."""
    rigs = _recording_rigs(monkeypatch)
    monkeypatch.setattr(SwapSequence, "heartbeat_frozen", lambda self, st, now: False)
    b = await broken(swap_core.test_frozen_heartbeat_halts_both_units_alarms_and_starts_nothing)
    assert b is not None, "the safety test still passes with the seam disabled"
    assert _plc_not_halted(rigs), f"the test fired ({b}) but the PLC was halted"


async def test_status_stale_never_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SwapSequence.status_stale` always false: a step runs on a status several polls old."""
    rigs = _recording_rigs(monkeypatch)
    monkeypatch.setattr(SwapSequence, "status_stale", lambda self, now: False)
    b = await broken(swap_core.test_a_stale_status_halts_a_running_step_and_no_step_starts_on_it)
    assert b is not None, "the safety test still passes with the seam disabled"
    assert _plc_not_halted(rigs), f"the test fired ({b}) but the PLC was halted"


# ---- item 6: a crashing service fails safe --------------------------------------------------


async def test_supervisor_without_fail_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Supervisor.fail_safe` does nothing: the crashed slot's charger stays fed and on through
    the backoff."""

    async def nothing(self: Supervisor, e: Any) -> None:
        return None

    monkeypatch.setattr(Supervisor, "fail_safe", nothing)
    b = await broken(
        outputs.test_a_crashing_slot_service_switches_its_charger_off_before_the_backoff, tmp_path
    )
    assert b is not None and "really_off(sim)" in b.line, b


# ---- item 3: the journal's positions are confirmed from the PLC -----------------------------


def test_plc_disagrees_trusting_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SwapSequence.plc_disagrees` finds nothing: a journal behind the robot is trusted and its
    steps are sent again to a PLC whose packs have moved."""
    monkeypatch.setattr(SwapSequence, "plc_disagrees", lambda self, st: [])
    b = broken_sync(plc_confirms.test_a_journal_behind_the_plc_holds_the_swap_and_moves_nothing)
    assert b is not None and "rig.sim.motions" in b.line, b
