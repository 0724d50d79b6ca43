"""Brokers other than Mosquitto (tests/brokers.py): the link falls back from MQTT 5 to 3.1.1 by
itself and says so once, and what the brokers do to a topic level with a `.` (why the contract
has none). The end-to-end contract test on every broker is in test_telemetry_asyncapi.py, the
backend peer in test_mqtt_peer.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog

from tests.edge.telemetry_fixtures import make_telemetry, recorder, running


def _fallback_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if "refuses MQTT 5" in str(e.get("event"))]


@pytest.mark.parametrize("broker_name", ["nats", "rabbitmq"])
async def test_mqtt5_falls_back_to_311_at_once_and_says_so_once(
    broker_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broker = request.getfixturevalue(broker_name)
    station_id = f"st-{uuid.uuid4().hex[:8]}"
    # A long connect timeout: the fallback must not wait for it (RabbitMQ hangs up without a
    # CONNACK, which aiomqtt alone would sit out).
    tel = make_telemetry(
        broker.host,
        broker.port,
        tmp_path,
        mqtt={"protocol": "5", "connect_timeout_s": 20.0},
        station_id=station_id,
    )
    with structlog.testing.capture_logs() as logs:
        async with running(tel):
            t0 = time.monotonic()
            await asyncio.wait_for(tel.connected.wait(), 15)
            assert time.monotonic() - t0 < 10
            assert tel.protocol == "3.1.1" and tel.connects == 1
            # Reconnects keep 3.1.1 and do not log the fallback again.
            if broker_name == "nats":
                broker.stop()
                await asyncio.wait_for(_until(lambda: not tel.connected.is_set()), 10)
                broker.start()
                await asyncio.wait_for(tel.connected.wait(), 15)
                assert tel.connects == 2 and tel.protocol == "3.1.1"
            tel.emit_event("swap.started", {"swap_id": "w1", "vehicle_id": "V1", "pack_type": "A"})
            await asyncio.wait_for(_until(lambda: tel.events_published >= 1), 10)
    assert len(_fallback_warnings(logs)) == 1, logs


async def test_mosquitto_keeps_mqtt5(mosquitto: Any, tmp_path: Path) -> None:
    tel = make_telemetry(mosquitto.host, mosquitto.port, tmp_path, mqtt={"protocol": "5"})
    with structlog.testing.capture_logs() as logs:
        async with running(tel):
            await asyncio.wait_for(tel.connected.wait(), 10)
            assert tel.protocol == "5"
    assert not _fallback_warnings(logs)


async def test_a_dotted_topic_level_breaks_nats_and_is_rewritten_by_rabbitmq(
    nats: Any, rabbitmq: Any
) -> None:
    """The 1.x contract's `event/swap.started`: NATS drops the publisher, RabbitMQ delivers on
    `event/swap/started`. Why every level of the contract is plain now."""
    root = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(nats.host, nats.port, timeout=3) as c:
            await c.publish(f"{root}/event/swap.started", b"{}", qos=1, timeout=3)
    async with recorder(rabbitmq.host, rabbitmq.port, f"{root}/#") as rec:
        async with aiomqtt.Client(rabbitmq.host, rabbitmq.port) as c:
            await c.publish(f"{root}/event/swap.started", b"{}", qos=1)
        await rec.wait_for(lambda: len(rec.messages) >= 1, 10)
    assert [m.topic for m in rec.messages] == [f"{root}/event/swap/started"]


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.02)
