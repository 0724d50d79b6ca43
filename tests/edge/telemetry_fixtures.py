"""Helpers for the telemetry tests: a station's worth of sample payloads, a Telemetry wired to a
test broker, and a subscriber that records everything under the station's root."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import orjson

from drivers.core.alarm_sink import AlarmSink
from drivers.core.clock import Clock, SystemClock
from edge.operator.config import CommandsConfig
from edge.operator.service import CommandService
from edge.operator.signatures import Verifier
from edge.state import OperatingMode
from edge.swap.model import Mode as SwapMode
from edge.telemetry.asyncapi import build
from edge.telemetry.config import MqttConfig, TelemetryConfig
from edge.telemetry.models import (
    GridMode,
    RobotTelemetry,
    SlotTelemetry,
    StationTelemetry,
)
from edge.telemetry.service import Telemetry
from tests.doubles import InMemoryTarget

STATION_ID = "st-test-01"


def station(power_kw: float = 120.0) -> StationTelemetry:
    return StationTelemetry(
        grid_power_kw=power_kw,
        grid_cap_kw=600.0,
        grid_limit_kw=500.0,
        operating_mode=OperatingMode.NORMAL,
        grid_mode=GridMode.CHARGE,
        grid_reason="valley tariff",
        tariff_period="valley",
        packs_total=20,
        packs_full=8,
        packs_charging=10,
        packs_unavailable=2,
    )


def slot(soc_pct: float = 50.0, voltage_v: float = 600.0) -> SlotTelemetry:
    return SlotTelemetry(
        pack_id="PK-0001",
        soc_pct=soc_pct,
        voltage_v=voltage_v,
        current_a=100.0,
        power_kw=60.0,
        temp_max_c=31.0,
        temp_min_c=25.0,
        session_phase="charging",
        charger_state="running",
    )


def robot(step: str | None = None) -> RobotTelemetry:
    return RobotTelemetry(
        sequence_state=SwapMode.IDLE if step is None else SwapMode.RUNNING,
        step=step,
        axes_mm={"lift": 0.0, "shuttle": 120.0},
        interlocks={"curtain_clear": True, "doors_closed": True, "estop_healthy": True},
    )


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def command(cmd_id: str, params: dict[str, Any], ttl_s: float = 60.0) -> bytes:
    return orjson.dumps(
        {
            "cmd_id": cmd_id,
            "expires_at": iso(datetime.now(UTC) + timedelta(seconds=ttl_s)),
            "params": params,
        }
    )


def mqtt_config(host: str, port: int, **kw: Any) -> MqttConfig:
    base: dict[str, Any] = {
        "host": host,
        "port": port,
        "keepalive_s": 5,
        "connect_timeout_s": 2.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
    }
    base.update(kw)
    return MqttConfig.model_validate(base)


def telemetry_config(tmp_path: Path, **kw: Any) -> TelemetryConfig:
    base: dict[str, Any] = {
        "outbox_path": tmp_path / "outbox.sqlite",
        "min_interval_s": 0.0,
        "refresh_s": 3600.0,
        "outbox_synchronous": "normal",
    }
    base.update(kw)
    return TelemetryConfig.model_validate(base)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return orjson.loads(self.payload)


class Recorder:
    """Subscribes to `<root>/#` and keeps every message; wait_for() polls a predicate."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._new = asyncio.Event()

    def add(self, m: Received) -> None:
        self.messages.append(m)
        self._new.set()

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.messages if "/event/" in m.topic]

    async def wait_for(self, pred: Callable[[], bool], timeout_s: float = 15.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():
                self._new.clear()
                await self._new.wait()


@asynccontextmanager
async def recorder(host: str, port: int, topic: str, **client_kw: Any) -> AsyncIterator[Recorder]:
    rec = Recorder()
    async with aiomqtt.Client(host, port, **client_kw) as c:
        await c.subscribe(topic, qos=1)

        async def pump() -> None:
            async for m in c.messages:
                rec.add(Received(m.topic.value, bytes(m.payload), bool(m.retain)))  # type: ignore[arg-type]

        task = asyncio.create_task(pump(), name="test-recorder")
        try:
            yield rec
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def running(tel: Telemetry) -> AsyncIterator[Telemetry]:
    """Run the telemetry owner task; orderly stop and close on exit."""
    task = asyncio.create_task(tel.run(), name="telemetry-under-test")
    try:
        yield tel
    finally:
        tel.stop()
        try:
            async with asyncio.timeout(10):
                await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            tel.close()


def make_telemetry(
    host: str,
    port: int,
    tmp_path: Path,
    target: InMemoryTarget | None = None,
    mqtt: dict[str, Any] | None = None,
    alarms: AlarmSink | None = None,
    station_id: str = STATION_ID,
    commands: dict[str, Any] | None = None,
    **cfg: Any,
) -> Telemetry:
    tcfg = telemetry_config(tmp_path, **cfg)
    limits = CommandsConfig.model_validate(commands or {})
    return Telemetry(
        station_id,
        mqtt_config(host, port, **(mqtt or {})),
        tcfg,
        command_service(target or InMemoryTarget(), limits, tcfg),
        version="0.1.0-test",
        alarms=alarms,
        commands=limits,
    )


def command_service(
    target: InMemoryTarget,
    limits: CommandsConfig | None = None,
    tcfg: TelemetryConfig | None = None,
    clock: Clock | None = None,
    verifier: Verifier | None = None,
) -> CommandService:
    """The station's command service in front of an in-memory station."""
    tcfg = tcfg or TelemetryConfig()
    return CommandService(
        limits or CommandsConfig(),
        target,
        clock=clock or SystemClock(),
        verifier=verifier,
        timeout_s=tcfg.command_timeout_s,
        max_power_lease_s=tcfg.max_power_lease_s,
    )


class Contract:
    """The AsyncAPI document as a checker: topic -> channel, payload -> schema."""

    def __init__(self) -> None:
        self.doc = build()
        self.channels: list[tuple[re.Pattern[str], str]] = []
        for cid, c in self.doc["channels"].items():
            pattern = re.escape(c["address"]).replace(r"\{", "{").replace(r"\}", "}")
            pattern = re.sub(r"\{[a-z_]+\}", "[^/]+", pattern)
            self.channels.append((re.compile(f"^{pattern}$"), cid))

    def check(self, m: Received) -> str:
        matches = [cid for rx, cid in self.channels if rx.match(m.topic)]
        assert len(matches) == 1, f"{m.topic} matches {matches}"
        cid = matches[0]
        ref = self.doc["components"]["messages"][cid]["payload"]["$ref"]
        schema = {**self.doc, "$ref": ref}
        jsonschema.Draft202012Validator(schema).validate(orjson.loads(m.payload))
        return cid


class Gate:
    """A TCP relay in front of the broker that the test opens and closes, so the link reconnects
    only once the test's subscriber is ready (no race with a restarted broker)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.is_open = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every relayed connection: from now on nothing the link sends reaches the broker."""
        for w in list(self._writers):
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.add(w)
        if not self.is_open:
            w.close()
            return
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            w.close()
            return
        self._writers.add(bw)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        for a, b in ((r, bw), (br, w)):
            t = asyncio.create_task(pipe(a, b), name="test-gate-pipe")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
