"""Random command payloads: each gets exactly one well-formed result; nothing crashes."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.operator.config import CommandsConfig
from edge.telemetry.commands import CommandProcessor, CommandStore
from edge.telemetry.config import TelemetryConfig
from edge.telemetry.models import MQTT_COMMANDS as COMMAND_NAMES
from edge.telemetry.models import CommandResult
from edge.telemetry.outbox import open_db
from tests.conftest import Broker
from tests.doubles import InMemoryTarget, ManualClock
from tests.edge.telemetry_fixtures import (
    STATION_ID,
    command,
    command_service,
    make_telemetry,
    recorder,
    running,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
json_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_value = st.recursive(
    json_scalar,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)
param_values = (
    json_value
    | st.sampled_from(["normal", "maintenance", "drain", "2026-01-01T00:10:00Z", "V1"])
    | st.floats(min_value=-10, max_value=1e6)
)
params = st.dictionaries(
    st.sampled_from(["power_kw", "valid_until", "mode", "enabled", "vehicle_id", "pack_type", "x"]),
    param_values,
    max_size=4,
)
envelope = st.fixed_dictionaries(
    {},
    optional={
        "cmd_id": st.text(max_size=10) | json_scalar,
        "expires_at": st.sampled_from(
            ["2026-01-01T00:05:00Z", "2025-12-31T00:00:00Z", "2026-01-01T00:05:00", "soon"]
        )
        | json_scalar,
        "params": params | json_value,
        "junk": json_value,
    },
)
payloads = (
    envelope.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=40)
    | json_value.map(lambda v: json.dumps(v).encode())
)
names = st.sampled_from([*COMMAND_NAMES, "bogus", ""]) | st.text(max_size=12)


def test_random_payloads_each_get_one_valid_result(tmp_path: Path) -> None:
    clock = ManualClock(wall=NOW)
    db = open_db(tmp_path / "f.sqlite", "normal")
    cfg = TelemetryConfig.model_validate({"outbox_path": tmp_path / "x"})
    limits = CommandsConfig(
        remote={"reset_fault": "allow"}, rate_per_client_per_s=1e4, burst_per_client=10_000
    )
    target = InMemoryTarget()
    service = command_service(target, limits, cfg, clock)
    proc = CommandProcessor(cfg, service, CommandStore(db), clock, limits=limits)
    runner = asyncio.Runner()

    @settings(
        max_examples=1000,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(name=names, payload=payloads)
    def check(name: str, payload: bytes) -> None:
        out = runner.run(proc.handle(name, payload))
        r = CommandResult.model_validate_json(out)
        assert r.ok is (r.error is None)
        again = runner.run(proc.handle(name, payload))
        if r.cmd_id is not None:
            assert again == out  # dedupe: same bytes, acted once
        if r.ok:
            assert name in COMMAND_NAMES

    try:
        check()
    finally:
        runner.close()
        db.close()


async def test_random_payloads_over_the_broker_and_the_daemon_carries_on(
    mosquitto: Broker, tmp_path: Path
) -> None:
    rnd = random.Random(7)
    # A fuzz run, not a flood: the per-client rate limit has its own test.
    unlimited = {"rate_per_client_per_s": 10_000, "burst_per_client": 10_000}
    tel = make_telemetry(mosquitto.host, mosquitto.port, tmp_path, commands=unlimited)
    root = f"swapstation/v1/{STATION_ID}"
    sent = 0

    def junk() -> bytes:
        k = rnd.randrange(6)
        if k == 0:
            return bytes(rnd.randrange(256) for _ in range(rnd.randrange(30)))
        if k == 1:
            return b'{"cmd_id": ' + str(rnd.random()).encode()
        d: dict[str, Any] = {
            "cmd_id": f"j{rnd.randrange(10**9)}",
            "expires_at": (datetime.now(UTC) + timedelta(seconds=rnd.choice([-5, 60]))).isoformat(),
            "params": {rnd.choice(["mode", "power_kw", "x"]): rnd.choice([1, "drain", None, []])},
        }
        if k == 2:
            del d["cmd_id"]
        return orjson.dumps(d)

    async with (
        recorder(mosquitto.host, mosquitto.port, f"{root}/cmd/+/result") as rec,
        running(tel),
    ):
        await asyncio.wait_for(tel.connected.wait(), 10)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as cloud:
            for _ in range(300):
                name = rnd.choice([*COMMAND_NAMES, "bogus", "x y"])
                await cloud.publish(f"{root}/cmd/{name}", junk(), qos=1)
                sent += 1
            await rec.wait_for(lambda: len(rec.messages) >= sent, timeout_s=30)
            await cloud.publish(f"{root}/cmd/set_mode", command("last", {"mode": "drain"}), qos=1)
            await rec.wait_for(lambda: len(rec.messages) > sent)
    results = [CommandResult.model_validate_json(m.payload) for m in rec.messages]
    assert len(results) == sent + 1
    assert results[-1].cmd_id == "last" and results[-1].ok
