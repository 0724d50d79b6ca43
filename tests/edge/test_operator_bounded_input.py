"""Bounded input on the MQTT route: a huge payload costs the processor nothing (it is never
parsed), and the queue of messages waiting for the command loop is bounded."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from drivers.core.clock import SystemClock
from edge.operator.config import CommandsConfig
from edge.operator.service import CommandService
from edge.telemetry.commands import CommandProcessor, CommandStore
from edge.telemetry.config import TelemetryConfig
from edge.telemetry.models import Params
from edge.telemetry.outbox import open_db
from edge.telemetry.service import Telemetry
from tests.conftest import Broker
from tests.edge.telemetry_fixtures import (
    STATION_ID,
    iso,
    mqtt_config,
    recorder,
    running,
    telemetry_config,
)

ROOT = f"swapstation/v1/{STATION_ID}"


class _Station:
    """Carries out every command; the first one waits until released (a busy station)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.done = 0

    async def carry_out(self, params: Params) -> dict[str, Any] | None:
        if not self.started.is_set():
            self.started.set()
            await self.release.wait()
        self.done += 1
        return None


@pytest.mark.parametrize("mb", [8, 40])
async def test_a_huge_payload_is_refused_without_parsing_it(tmp_path: Path, mb: int) -> None:
    clock = SystemClock()
    station = _Station()
    station.started.set()  # nothing waits here
    limits = CommandsConfig()
    service = CommandService(limits, station, clock=clock)
    db = open_db(tmp_path / "c.sqlite", "normal")
    proc = CommandProcessor(
        TelemetryConfig.model_validate({"outbox_path": tmp_path / "x"}),
        service,
        CommandStore(db, limits.dedupe_max),
        clock,
        limits=limits,
    )
    expires = iso(datetime.now(UTC) + timedelta(seconds=60))
    head = b'{"cmd_id": "huge-1", "expires_at": "' + expires.encode() + b'", "params": {"p": "'
    payload = head + b"a" * (mb * 1024 * 1024) + b'"}}'
    t0 = time.perf_counter()
    out = orjson.loads(await proc.handle("set_mode", payload))
    took_s = time.perf_counter() - t0
    print(f"{mb} MB payload refused in {took_s * 1e3:.2f} ms")
    assert out["cmd_id"] == "huge-1" and out["error"]["code"] == "too_large"
    assert took_s < 0.05  # was 0.5 s for 8 MB and 4.2 s for 40 MB when parsed
    assert proc.too_large == 1 and station.done == 0
    db.close()


async def test_the_inbound_queue_is_bounded(
    mosquitto: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the station is busy with one command, at most `queue_size` more wait; the rest
    are dropped by the link (no result: the sender resends, the dedupe store answers)."""
    station = _Station()
    limits = CommandsConfig(queue_size=5)
    service = CommandService(limits, station, clock=SystemClock())
    tel = Telemetry(
        STATION_ID,
        mqtt_config(mosquitto.host, mosquitto.port),
        telemetry_config(tmp_path),
        service,
        version="t",
        commands=limits,
    )
    try:
        async with (
            recorder(mosquitto.host, mosquitto.port, f"{ROOT}/cmd/+/result") as rec,
            running(tel),
            aiomqtt.Client(mosquitto.host, mosquitto.port) as cloud,
        ):
            await asyncio.wait_for(tel.connected.wait(), 10)

            def cmd(i: int) -> bytes:
                expires = iso(datetime.now(UTC) + timedelta(seconds=60))
                return orjson.dumps(
                    {"cmd_id": f"q{i}", "expires_at": expires, "params": {}, "client_id": f"c{i}"}
                )

            await cloud.publish(f"{ROOT}/cmd/refresh", cmd(0), qos=1)
            await asyncio.wait_for(station.started.wait(), 10)
            flood = 40
            for i in range(1, flood + 1):
                await cloud.publish(f"{ROOT}/cmd/refresh", cmd(i), qos=1)

            def dropped() -> int:
                return sum("queue is full" in r.getMessage() for r in caplog.records)

            async with asyncio.timeout(10):
                while dropped() < flood - limits.queue_size:
                    await asyncio.sleep(0.01)
            station.release.set()
            await rec.wait_for(lambda: len(rec.messages) >= 1 + limits.queue_size)
            # Nothing more comes: resend a known id and wait for its (stored) answer.
            await cloud.publish(f"{ROOT}/cmd/refresh", cmd(0), qos=1)
            await rec.wait_for(
                lambda: len(rec.messages) > 1 and rec.messages[-1].json()["cmd_id"] == "q0"
            )
    finally:
        tel.close()
    answered = [m.json()["cmd_id"] for m in rec.messages]
    # q0, the five that waited, and q0's stored answer to the resend; nothing else.
    assert answered == ["q0", "q1", "q2", "q3", "q4", "q5", "q0"], answered
    assert station.done == 1 + limits.queue_size
    assert dropped() == flood - limits.queue_size
