"""Events match the contract: every event type has a closed payload model (a field the contract
does not document cannot be sent), the docs name exactly the models' fields, and the producers
set every documented field in some run (a field documented but never set fails here)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from edge.alarms import AlarmManager
from edge.swap.inventory import Handling, SlotPlace
from edge.swap.messages import (
    CorrectInventory,
    Manual,
    PackDocked,
    PackIdentity,
    PlcOffline,
    RefitOriginal,
    ResetFault,
    RetryStep,
)
from edge.swap.model import Mode
from edge.swap.snapshot import restore, take
from edge.telemetry.alarm_events import AlarmEvents
from edge.telemetry.models import EVENT_DETAILS, Details, EventType, SwapCompleted
from tests.edge.swap_fixtures import ANNOUNCED, PACK_TYPE, SLOTS, CoreRig

REPO = Path(__file__).resolve().parents[2]
SWAP_ROOM = {t for t in EventType if t.startswith("swap.")} | {EventType.INVENTORY_CORRECTED}


def fields_of(model: type[Details]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def never_set(events: Iterable[tuple[str, dict[str, Any]]], types: set[EventType]) -> list[str]:
    """`type.field` for each documented field of `types` that no event set (not null)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for etype, details in events:
        undocumented = set(details) - fields_of(EVENT_DETAILS[EventType(etype)])
        assert not undocumented, (etype, undocumented)
        seen[etype] |= {k for k, v in details.items() if v is not None}
    return sorted(
        f"{t}.{f}" for t in types for f in fields_of(EVENT_DETAILS[t]) if f not in seen[t]
    )


def test_every_event_type_has_a_closed_payload_model() -> None:
    assert set(EVENT_DETAILS) == set(EventType)
    for etype, model in EVENT_DETAILS.items():
        assert model.model_config.get("extra") == "forbid", etype
    with pytest.raises(ValidationError, match="depleted_pack_id"):
        SwapCompleted.model_validate({"swap_id": "w", "depleted_pack_id": "P"})


def test_the_mqtt_doc_names_exactly_the_fields_of_each_model() -> None:
    text = (REPO / "docs" / "mqtt.md").read_text()
    text = text[text.index("### Events") : text.index("Guarantees, and what a backend")]
    documented: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\| (`[a-z_.]+`(?:, `[a-z_.]+`)*) \| (.*) \|$", line)
        if m is None:
            continue
        names = set(re.findall(r"`([^`]+)`", re.sub(r"\[[^\]]*\]", "", m.group(2))))
        for etype in re.findall(r"`([^`]+)`", m.group(1)):
            documented[etype] = names
    assert set(documented) == {str(t) for t in EventType}
    for etype, model in EVENT_DETAILS.items():
        assert documented[etype] == fields_of(model), etype


def _swap_runs() -> list[tuple[str, dict[str, Any]]]:
    """Runs of the swap core that between them reach every kind of its events."""
    out: list[tuple[str, dict[str, Any]]] = []

    ok = CoreRig(auto_outputs=False)  # outputs confirmed late: steps report blocked first
    ok.vehicle.arrive()
    ok.start()
    for _ in range(3):
        ok.clock.advance(0.5)
        ok.poll()
    ok.auto_outputs = True
    ok.run(lambda: any(c.step_id == "store_depleted" for c in ok.commands))
    ok.feed(PackDocked("S4", PackIdentity("P-REAL-9", PACK_TYPE)))  # not the announced pack
    ok.run(lambda: ok.has("swap.completed"))
    ok.feed(PackDocked("S6", PackIdentity("P-NEW", PACK_TYPE)))  # one the station did not know
    ok.feed(CorrectInventory("P-NEW", None))
    out += ok.published

    torque = CoreRig()  # the lock fails, then its heads reach torque: done after the failure
    torque.vehicle.arrive()
    torque.sim.inject_torque_failure(2)
    torque.start()
    torque.run(lambda: torque.core.mode == Mode.HELD)
    torque.sim.lock_torque_ok = 0xFF
    torque.poll()
    out += torque.published

    refit = CoreRig()  # a step fault, a retry that fails again, a restart, then refit
    refit.vehicle.arrive()
    refit.sim.inject_step_fault("rack", "take")
    refit.start()
    refit.run(lambda: refit.core.mode == Mode.HELD and refit.place("P-002") == "buffer")
    refit.core = restore(refit.graph, SLOTS, take(refit.core))
    refit.apply(refit.core.resume(refit.clock.monotonic()))
    refit.poll()
    refit.feed(RetryStep())
    refit.sim.inject_step_fault("rack", "take")
    refit.run(lambda: refit.core.mode == Mode.HELD)
    refit.feed(RefitOriginal())
    refit.run(lambda: refit.has("swap.failed"))
    out += refit.published

    plc = CoreRig()  # the PLC loses its counter: reset_fault clears that alarm
    plc.vehicle.arrive()
    plc.start()
    plc.run(lambda: any(c.step_id == "unlock" for c in plc.commands))
    for u in plc.sim.units.values():
        u.ack_seq = 0
        u.state = u.state.IDLE
    plc.clock.advance(5)
    plc.poll()
    plc.feed(ResetFault())
    plc.feed(PlcOffline("gone"))
    plc.feed(Manual())
    plc.feed(CorrectInventory("P-001", SlotPlace("S1")))  # as recorded: an attendant checked
    out += plc.published
    return out


def test_the_swap_core_sets_every_documented_field_of_its_events() -> None:
    events = _swap_runs()
    assert {t for t, _ in events} == SWAP_ROOM
    assert never_set(events, SWAP_ROOM) == []
    done = [d for t, d in events if t == EventType.SWAP_COMPLETED][0]
    assert done["pack_in_id"] == ANNOUNCED and done["pack_out_id"] == "P-002"
    assert 60 < done["duration_s"] < 400


def test_the_duration_counts_across_a_restart() -> None:
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: any(c.step_id == "lift" for c in rig.commands))
    before = rig.clock.monotonic() - rig.core.swap.started_at  # type: ignore[union-attr]
    snap = orjson.loads(orjson.dumps(take(rig.core)))  # as the journal stores it
    rig.core = restore(rig.graph, SLOTS, snap)
    rig.clock.advance(600)  # the daemon was down: not the swap's time
    rig.apply(rig.core.resume(rig.clock.monotonic()))
    rig.run(lambda: rig.has("swap.completed"))
    done = rig.published[-1][1]
    assert before > 10 and done["duration_s"] < 400


def test_the_snapshot_keeps_its_file_form() -> None:
    """Derived from the dataclasses, the snapshot still reads and writes format 1 (the files in
    tests/data/state): places as text, moves as [pack, from, to] rows, [id, type] pairs."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: any(c.step_id == "fetch_full" for c in rig.commands))
    snap = take(rig.core)
    assert snap["version"] == 1 and snap["mode"] == "running" and snap["shuttle_at"] == "vehicle"
    assert {"pack_id": ANNOUNCED, "pack_type": PACK_TYPE, "place": "vehicle"} in snap["inventory"]
    run = snap["swap"]["runs"]["fetch_full"]
    assert run == {
        "status": "active",
        "seq": run["seq"],
        "attempts": 1,
        "moves": [["P-002", "slot:S2", "buffer"]],
        "reason": "",
    }
    assert snap["swap"]["kind"] == "swap" and snap["swap"]["outputs_off"] == ["S4"]
    assert snap["pending_docks"] == {} and snap["alarms"] == []
    core = restore(rig.graph, SLOTS, snap)
    assert take(core) == snap
    assert core.inventory.get(ANNOUNCED).place is Handling.VEHICLE  # type: ignore[union-attr]
    assert core.inventory.get("P-001").place == SlotPlace("S1")  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        restore(rig.graph, SLOTS, {**snap, "mode": "dancing"})


async def test_alarm_and_command_events_set_their_optional_fields(tmp_path: Path) -> None:
    """The telemetry room's own producers: alarm events, the command audit (a refusal names
    its code). mode.changed and outbox.overflow have required fields only."""
    from edge.operator.config import CommandsConfig
    from edge.telemetry.config import MqttConfig, TelemetryConfig
    from edge.telemetry.service import Telemetry
    from tests.doubles import InMemoryTarget, ManualClock
    from tests.edge.telemetry_fixtures import command_service, iso

    cfg = TelemetryConfig.model_validate({"outbox_path": tmp_path / "o.sqlite"})
    limits = CommandsConfig.model_validate({"remote": {"reset_fault": "allow"}})
    service = command_service(InMemoryTarget(), limits)
    tel = Telemetry("st1", MqttConfig(), cfg, service, commands=limits, version="t")
    try:
        mgr = AlarmManager(ManualClock())
        AlarmEvents(mgr, tel)
        mgr.raiser("slot").raise_alarm("pack.fault", "s01", "BSM flag")
        mgr.raiser("slot").clear_alarm("pack.fault", "s01")
        envelope = {"cmd_id": "c1", "expires_at": iso(datetime.now(UTC) + timedelta(minutes=1))}
        # no fault latched: refused at the station
        await tel.commands.handle("reset_fault", orjson.dumps({**envelope, "params": {}}))
        events = [(e.type, orjson.loads(e.details)) for e in tel.outbox.pending(0)]
    finally:
        tel.close()
    types = {EventType.ALARM_RAISED, EventType.ALARM_CLEARED, EventType.COMMAND_EXECUTED}
    assert {t for t, _ in events} == types
    assert never_set(events, types) == []


async def test_the_slot_service_sets_every_field_of_its_charge_events(tmp_path: Path) -> None:
    """A charging session that a pack fault stops: charge.started and charge.stopped as stored
    in the outbox, with the pack, the stop reason and the energy of the session."""
    from sim.devices.pack import Fault
    from tests.edge.station_fixtures import mini_config, running_station, wait_for

    async with running_station(mini_config(tmp_path, 1), soc_pct=40.0) as w:
        slot = w.station.slots["s01"]
        await wait_for(lambda: slot.link.session.energy_kwh > 0.005, 20)
        w.packs["s01"].inject(Fault.OVER_TEMPERATURE)

        def charge_events() -> list[tuple[str, dict[str, Any]]]:
            stored = w.station.telemetry.outbox.pending(0)
            return [
                (e.type, orjson.loads(e.details)) for e in stored if e.type.startswith("charge.")
            ]

        await wait_for(lambda: any(t == "charge.stopped" for t, _ in charge_events()), 5)
        events = charge_events()
    assert never_set(events, {EventType.CHARGE_STARTED, EventType.CHARGE_STOPPED}) == []
    stopped = [d for t, d in events if t == "charge.stopped"][0]
    assert stopped["energy_kwh"] > 0 and stopped["pack_id"]
