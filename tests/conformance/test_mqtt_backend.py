"""The real daemon (`swapd run` in a child process, with the conformance peers: GB/T BMS over
SLCAN/TCP, chargers over Modbus TCP, the robot PLC peer) against a backend that knows only
docs/asyncapi.yaml, on each real broker: Mosquitto, NATS's MQTT gateway, RabbitMQ.

Bounded twice: the body runs under `asyncio.timeout` (so the daemon, the peers and the MQTT
clients are torn down by their own context managers on a hang), and pytest-timeout is the last
resort; a child daemon that survives anyway is killed by tests/conformance/conftest.py. The
brokers are fixtures that stop (then kill) their process in `finally`."""

from __future__ import annotations

import ast
import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conformance.gbt_bms import BmsPeerConfig
from tests.conformance.mqtt_backend import Backend, Document, pump, subscribe_all
from tests.conformance.rig import conformance_station

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "asyncapi.yaml"


def test_backend_peer_imports_neither_drivers_edge_nor_sim() -> None:
    tree = ast.parse((Path(__file__).parent / "mqtt_backend.py").read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    ]
    # It reads the document (YAML), nothing of ours.
    assert not [m for m in modules if m.split(".")[0] in ("drivers", "edge", "sim", "tests")]


def test_document_levels_are_plain() -> None:
    doc = Document(DOC)
    assert doc.level_problems() == []
    assert doc.version.split(".")[0] >= "2"


BODY_S = 90.0  # the test's own bound; pytest-timeout (150 s) also covers a RabbitMQ start


@pytest.mark.timeout(150)
async def test_daemon_against_the_document_backend(any_broker: Any, tmp_path: Path) -> None:
    async with asyncio.timeout(BODY_S):
        await _against_the_document(any_broker, tmp_path)


async def _against_the_document(any_broker: Any, tmp_path: Path) -> None:
    doc = Document(DOC)
    station_id = f"peer-{uuid.uuid4().hex[:8]}"  # the RabbitMQ node keeps retained status
    backend = Backend(doc, any_broker.host, any_broker.port, station_id)
    room = Backend(doc, any_broker.host, any_broker.port, station_id)
    events = doc.channel("eventModeChanged")
    room_filter = events.topic(backend.params).rsplit("/", 1)[0] + "/#"  # event/mode/#
    packs = {
        n: BmsPeerConfig(serial=n, soc_pct=40.0, target_soc_pct=95.0, capacity_ah=50.0)
        for n in (1, 2)
    }
    async with (
        aiomqtt.Client(any_broker.host, any_broker.port, identifier=f"{station_id}-be") as cloud,
        aiomqtt.Client(any_broker.host, any_broker.port, identifier=f"{station_id}-rm") as rc,
    ):
        await subscribe_all(cloud, backend)
        await rc.subscribe(room_filter, qos=1)
        tasks = [
            asyncio.create_task(pump(cloud, backend), name="peer-backend"),
            asyncio.create_task(pump(rc, room), name="peer-room"),
        ]
        try:
            async with conformance_station(
                tmp_path,
                2,
                packs,
                daemon="process",
                mqtt_port=any_broker.port,
                station_id=station_id,
            ) as rig:
                await backend.wait_for(
                    lambda: any(g.payload["online"] for g in backend.on("status")), 30, "birth"
                )
                await backend.wait_for(
                    lambda: (
                        {g.topic.rsplit("/", 1)[1] for g in backend.on("telemetrySlot")}
                        >= {s.id for s in rig.config.slots}
                        and backend.on("telemetryStation")
                        and backend.on("telemetryRobot")
                    ),
                    30,
                    "telemetry of the station, every slot and the robot",
                )
                # The robot as the PLC reports it: idle, its units' positions, its interlocks.
                await backend.wait_for(
                    lambda: any(
                        g.payload["quality"] == "good"
                        and g.payload["sequence_state"] == "idle"
                        and g.payload["axes_mm"]
                        and g.payload["interlocks"]
                        for g in backend.on("telemetryRobot")
                    ),
                    15,
                    "robot telemetry from the PLC",
                )
                for g in backend.on("telemetrySlot"):
                    assert g.payload["slot_id"] == g.topic.rsplit("/", 1)[1]
                # The packs charge (the BMS peers ask 100 A): the slots say so.
                await backend.wait_for(
                    lambda: any(
                        (g.payload["current_a"] or 0) > 50 and g.payload["pack_id"]
                        for g in backend.on("telemetrySlot")
                    ),
                    30,
                    "a slot charging its pack",
                )
                r = await backend.command(cloud, "set_mode", {"mode": "maintenance"})
                assert r["ok"] is True and r["error"] is None, r
                await backend.wait_for(
                    lambda: any(
                        g.payload["details"]["operating_mode"] == "maintenance"
                        for g in backend.on("eventModeChanged")
                    ),
                    15,
                    "mode.changed event",
                )
                r = await backend.command(cloud, "refresh", {})
                assert r["ok"] is True, r
                await backend.wait_for(
                    lambda: any(
                        g.payload["operating_mode"] == "maintenance"
                        for g in backend.on("telemetryStation")
                    ),
                    15,
                    "station telemetry in maintenance",
                )
                await backend.send_raw(cloud, "set_mode", b"not json")
                await backend.wait_for(
                    lambda: any(
                        g.payload["cmd_id"] is None and g.payload["ok"] is False
                        for g in backend.on("cmdSetModeResult")
                    ),
                    15,
                    "result for a broken command",
                )
                await backend.wait_for(
                    lambda: len(backend.on("eventCommandExecuted")) >= 2, 15, "command events"
                )
                # The room's own subscription (`event/mode/#`) follows it too.
                await room.wait_for(lambda: room.on("eventModeChanged"), 15, "room event")
            await backend.wait_for(
                lambda: not backend.on("status")[-1].payload["online"], 15, "offline status"
            )
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    backend.check_events()
    assert backend.problems == [], "\n".join(backend.problems)
    assert room.problems == [] and {g.cid for g in room.got} <= {"eventModeChanged"}
