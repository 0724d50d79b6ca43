"""The AsyncAPI document: generated from the models, committed copy up to date, and every
message an end-to-end run puts on the broker matches a channel and validates."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import yaml

from edge.alarms import AlarmManager
from edge.telemetry.alarm_events import AlarmEvents, alarm_refs
from edge.telemetry.asyncapi import build, render_yaml
from edge.telemetry.models import EVENT_DETAILS, MQTT_COMMANDS, StationTelemetry
from tests.conftest import Broker
from tests.edge.telemetry_fixtures import (
    STATION_ID,
    Contract,
    command,
    make_telemetry,
    recorder,
    robot,
    running,
    slot,
    station,
)

REPO = Path(__file__).resolve().parents[2]
ROOT = f"swapstation/v1/{STATION_ID}"


def test_committed_document_is_the_generated_one() -> None:
    assert (REPO / "docs" / "asyncapi.yaml").read_text() == render_yaml()


def test_cli_prints_the_document() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge", "asyncapi"], cwd=REPO, capture_output=True, check=True
    )
    assert yaml.safe_load(out.stdout) == build()
    out = subprocess.run(
        [sys.executable, "-m", "edge", "asyncapi", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    assert orjson.loads(out.stdout) == build()


def test_every_contract_topic_has_a_channel_and_refs_resolve() -> None:
    doc = build()
    addresses = {c["address"] for c in doc["channels"].values()}
    r = "swapstation/v1/{station_id}"
    expected = {
        f"{r}/status",
        f"{r}/telemetry/station",
        f"{r}/telemetry/slot/{{slot_id}}",
        f"{r}/telemetry/robot",
        f"{r}/sim/{{device_id}}/fault",
    }
    expected |= {f"{r}/event/{t.replace('.', '/')}" for t in EVENT_DETAILS}
    expected |= {f"{r}/cmd/{n}" for n in MQTT_COMMANDS}
    expected |= {f"{r}/cmd/{n}/result" for n in MQTT_COMMANDS}
    assert addresses == expected
    assert all(len(a.split("/")) <= 7 for a in addresses)
    for ref in re.findall(r"\$ref': '#/([^']+)'", str(doc)):
        node: Any = doc
        for part in ref.split("/"):
            node = node[part]


async def test_end_to_end_messages_match_channels_and_schemas(
    any_broker: Broker, tmp_path: Path
) -> None:
    """On each real broker (Mosquitto, NATS, RabbitMQ): every message lands on a channel of the
    document and validates; the link asks for MQTT 5 and falls back where it is refused."""
    from drivers.core.clock import SystemClock

    mosquitto = any_broker  # the name the body grew up with
    # A station of its own: the RabbitMQ node serves the whole session and keeps retained status.
    station_id = f"st-{uuid.uuid4().hex[:8]}"
    ROOT = f"swapstation/v1/{station_id}"  # noqa: N806
    contract = Contract()
    tel = make_telemetry(
        mosquitto.host,
        mosquitto.port,
        tmp_path,
        commands={"remote": {"reset_fault": "allow"}},
        station_id=station_id,
    )
    alarms = AlarmManager(SystemClock())
    AlarmEvents(alarms, tel)
    for i in range(3):
        tel.update_slot(f"s{i}", slot())
    tel.update_robot(robot("lift"))
    # Every client with a timeout: aiomqtt waits forever for a PUBACK by default.
    async with recorder(mosquitto.host, mosquitto.port, f"{ROOT}/#", timeout=10) as rec:
        async with running(tel):
            await asyncio.wait_for(tel.connected.wait(), 10)
            protocol = tel.protocol
            raiser = alarms.raiser("swap")
            raiser.raise_alarm("robot.step_fault", "vehicle", "torque out of window")
            st = station().model_dump()
            st["active_alarms"] = alarm_refs(alarms.active)
            tel.update_station(StationTelemetry.model_validate(st))
            raiser.clear_alarm("robot.step_fault", "vehicle")
            tel.emit_event("swap.started", {"swap_id": "w1", "vehicle_id": "V1", "pack_type": "A"})
            tel.emit_event("swap.step", {"swap_id": "w1", "step": "lift", "state": "done"})
            tel.emit_event("swap.completed", {"swap_id": "w1", "duration_s": 139.0})
            tel.emit_event("swap.failed", {"swap_id": "w2", "step": "lock", "reason": "torque"})
            tel.emit_event("charge.started", {"slot_id": "s1", "pack_id": "PK1"})
            tel.emit_event("charge.stopped", {"slot_id": "s1", "reason": "full"})
            tel.emit_event("command.executed", {"cmd_id": "c", "command": "x", "ok": True})
            tel.emit_event("mode.changed", {"operating_mode": "drain", "source": "local"})
            tel.emit_event("swap.fault", {"swap_id": "w1", "reason": "emergency_stop"})
            tel.emit_event("swap.recovery", {"swap_id": "w1", "action": "reset_fault"})
            tel.emit_event(
                "swap.pack_mismatch", {"slot_id": "s1", "announced_pack_id": "A", "pack_id": "B"}
            )
            tel.emit_event("inventory.corrected", {"pack_id": "B", "place": "slot:s1"})
            n_events = 14
            good: dict[str, dict[str, Any]] = {
                "set_power_limit": {"power_kw": 300, "valid_until": "2099-01-01T00:00:00Z"},
                "set_mode": {"mode": "drain"},
                "reset_fault": {},
                "retry_step": {"swap_id": "w1"},
                "refit_original": {"swap_id": "w1"},
                "manual": {"enabled": False, "swap_id": "w1"},
                "refresh": {},
                "start_swap": {"vehicle_id": "V1", "pack_type": "A"},
                "inventory_set": {"pack_id": "B", "place": "slot:s1"},
                "reset_slot": {"slot_id": "s1"},
                "disable_slot": {"slot_id": "s1", "reason": "connector worn"},
                "enable_slot": {"slot_id": "s1"},
            }
            assert set(good) == set(MQTT_COMMANDS)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=10) as cloud:
                for i, (name, p) in enumerate(good.items()):
                    await cloud.publish(f"{ROOT}/cmd/{name}", command(f"k{i}", p), qos=1)
                await cloud.publish(f"{ROOT}/cmd/set_mode", b"junk", qos=1)
                await cloud.publish(
                    f"{ROOT}/sim/charger-1/fault", orjson.dumps({"fault": "offline"}), qos=1
                )
            await rec.wait_for(
                lambda: len(rec.events()) >= n_events and len(rec.on("/result")) >= len(good) + 1
            )
        await rec.wait_for(lambda: not rec.on("/status")[-1].json()["online"])
    seen = {
        contract.check(m) for m in rec.messages if "/cmd/" not in m.topic or "result" in m.topic
    }
    # Incoming commands we sent validate too (all but the deliberate junk).
    for m in rec.messages:
        if "/cmd/" in m.topic and not m.topic.endswith("/result") and m.payload != b"junk":
            seen.add(contract.check(m))
    assert {e["type"] for e in rec.events()} == set(EVENT_DETAILS) - {"outbox.overflow"}
    assert {"status", "telemetryStation", "telemetrySlot", "telemetryRobot", "simFault"} <= seen
    assert len(seen) >= 4 + n_events - 1 + 2 * len(good)
    assert protocol == ("5" if any_broker.name == "mosquitto" else "3.1.1")
