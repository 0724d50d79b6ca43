"""Fault injection: publish_fault -> broker -> FaultListener -> a simulated device; the dispatcher
drops bad payloads; `swapd sim`, `swapd sim fault`, `swapd sim faults` on the command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge.cli import main
from edge.config import StationConfig, load_config
from sim.broker import BrokerAddress, EmbeddedBroker
from sim.faults import (
    FaultDispatcher,
    FaultInjectable,
    FaultListener,
    FaultOutcome,
    MqttCredentials,
    StationMqtt,
    fault_catalogue,
    publish_fault,
    sim_devices,
    station_mqtt,
    supports,
)
from sim.runner import SimSetupError, serve_sims
from tests.edge.foundation_helpers import station_copy

ROOT = "swapstation/v1/demo-01"


class Heater:
    """A tiny simulated device: one fault with a parameter, an event per change."""

    def __init__(self) -> None:
        self.active: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()

    def faults(self) -> list[str]:
        return ["over_temperature", "offline", "silent"]

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        if fault == "over_temperature" and not isinstance(params.get("temp_c"), int | float):
            raise ValueError("over_temperature needs a numeric temp_c")
        self.active[fault] = dict(params)
        self.changed.set()

    def clear(self, fault: str) -> None:
        self.active.pop(fault, None)
        self.changed.set()

    async def wait_change(self) -> None:
        async with asyncio.timeout(10):
            await self.changed.wait()
        self.changed.clear()


def test_heater_is_fault_injectable() -> None:
    assert isinstance(Heater(), FaultInjectable)


@pytest.fixture
async def broker() -> AsyncIterator[BrokerAddress]:
    async with EmbeddedBroker() as b:
        yield b.address


@asynccontextmanager
async def running(listener: FaultListener) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(listener.run(), name="test-fault-listener")
        async with asyncio.timeout(10):
            await listener.subscribed.wait()
        yield
        task.cancel()


async def test_publish_fault_reaches_the_device_and_clears(broker: BrokerAddress) -> None:
    heater = Heater()
    listener = FaultListener(broker.url, ROOT, {"heater-1": heater})
    async with running(listener):
        await publish_fault(broker.url, ROOT, "heater-1", "over_temperature", False, {"temp_c": 71})
        await heater.wait_change()
        assert heater.active == {"over_temperature": {"temp_c": 71}}
        await publish_fault(broker, ROOT, "heater-1", "over_temperature", clear=True)
        await heater.wait_change()
        assert heater.active == {}
    assert listener.counts == {FaultOutcome.INJECTED: 1, FaultOutcome.CLEARED: 1}


async def test_listener_survives_bad_payloads_and_keeps_serving(broker: BrokerAddress) -> None:
    import aiomqtt

    heater = Heater()
    listener = FaultListener(broker, ROOT, {"heater-1": heater})
    async with running(listener):
        async with aiomqtt.Client(broker.host, broker.port) as raw:
            topic = f"{ROOT}/sim/heater-1/fault"
            await raw.publish(topic, b"not json", qos=1)
            await raw.publish(topic, b'{"fault": 3}', qos=1)
            await raw.publish(topic, b'{"fault": "offline", "extra": 1}', qos=1)
            await raw.publish(topic, b'{"fault": "melt"}', qos=1)
            await raw.publish(f"{ROOT}/sim/other/fault", b'{"fault": "offline"}', qos=1)
            await raw.publish(topic, b'{"fault": "over_temperature", "params": {"temp_c": "hot"}}')
            await raw.publish(topic, b'{"fault": "offline"}', qos=1)
        await heater.wait_change()
    assert heater.active == {"offline": {}}
    assert listener.counts == {
        FaultOutcome.INVALID: 3,
        FaultOutcome.UNKNOWN_FAULT: 1,
        FaultOutcome.UNKNOWN_DEVICE: 1,
        FaultOutcome.REJECTED: 1,
        FaultOutcome.INJECTED: 1,
    }


def test_dispatcher_rejects_topics_outside_the_filter() -> None:
    d = FaultDispatcher(ROOT, {"h": Heater()})
    good = b'{"fault": "offline"}'
    assert d.handle(f"{ROOT}/sim/h/fault", good) is FaultOutcome.INJECTED
    for topic in (f"{ROOT}/sim//fault", f"{ROOT}/sim/a/b/fault", "other/sim/h/fault"):
        assert d.handle(topic, good) is FaultOutcome.INVALID
    assert d.handle(f"{ROOT}/sim/h/fault", b"\xff\xfe") is FaultOutcome.INVALID
    assert d.handle(f"{ROOT}/sim/h/fault", b"[1, 2]") is FaultOutcome.INVALID


async def test_publish_fault_refuses_a_bad_device_id(broker: BrokerAddress) -> None:
    for bad in ("a/b", "ch.01", "$x", "a b"):
        with pytest.raises(ValueError, match="not a plain MQTT topic level"):
            await publish_fault(broker, ROOT, bad, "offline")


# ---- the catalogue and the command line ------------------------------------------------------


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return station_copy(tmp_path)


def test_catalogue_covers_every_device_type_and_names_its_source() -> None:
    cat = {d.device_type: d for d in fault_catalogue()}
    assert set(cat) == {"charger", "pack", "robot"}
    for d in cat.values():
        assert d.faults and d.source
        names = [f.name for f in d.faults]
        assert len(names) == len(set(names))
    assert "emergency_stop" in [f.name for f in cat["robot"].faults]
    assert "bcl_stops" in [f.name for f in cat["pack"].faults]
    assert "silent" in [f.name for f in cat["charger"].faults]


def test_supports_matches_names_and_patterns() -> None:
    charger = next(d for d in fault_catalogue() if d.device_type == "charger")
    assert supports(charger, "silent")
    assert supports(charger, "bit:over_voltage")
    assert not supports(charger, "bit:")
    assert not supports(charger, "melt")


@pytest.mark.parametrize("device", ["ch01", "pack-s01", "robot"])
def test_sim_fault_refuses_a_fault_the_simulator_lacks(
    config_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    assert main(["sim", "fault", "--config", str(config_path), device, "melt"]) == 2
    err = capsys.readouterr().err
    assert f"{device!r} has no fault 'melt'; faults: " in err


def test_sim_devices_from_config(config_path: Path) -> None:
    cfg = load_config(config_path)
    devices = sim_devices([c.id for c in cfg.chargers], [s.id for s in cfg.slots])
    assert devices["ch01"] == "charger"
    assert devices["pack-s12"] == "pack"
    assert devices["robot"] == "robot"
    assert len(devices) == 25


def test_sim_faults_lists_every_type(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "faults", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "charger: 12 device(s): ch01" in out
    assert "pack: 12 device(s): pack-s01" in out
    assert "robot: 1 device(s): robot" in out
    for d in fault_catalogue():
        for f in d.faults:
            assert f"  {f.name} " in out
        assert f"source: {d.source}" in out


def test_sim_faults_json(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--config", str(config_path), "faults", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["robot"]["devices"] == ["robot"]
    assert {
        "name": "torque_failure",
        "description": doc["robot"]["faults"][5]["description"],
        "params": ["heads: int"],
    } in doc["robot"]["faults"]


async def test_sim_fault_cli_publishes_to_the_override_broker(
    broker: BrokerAddress, config_path: Path
) -> None:
    heater = Heater()
    listener = FaultListener(broker, ROOT, {"ch01": heater})
    async with running(listener):
        argv = [
            sys.executable, "-m", "edge", "sim", "fault", "--config", str(config_path),
            "ch01", "silent", "--param", "delay_s=2.5", "--param", "note=x y",
            "--broker", broker.url,
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        await heater.wait_change()
    assert heater.active == {"silent": {"delay_s": 2.5, "note": "x y"}}
    result = orjson.loads(out.decode().strip().splitlines()[-1])
    assert result["ok"] is True
    assert result["topic"] == f"{ROOT}/sim/ch01/fault"


@pytest.mark.parametrize(
    "argv",
    [
        ["sim"],  # no --config
        ["sim", "fault", "--config", "{cfg}", "ch01"],  # FAULT missing
        ["sim", "fault", "--config", "{cfg}", "ch01", "offline", "--param", "novalue"],
        ["sim", "fault", "--config", "{cfg}", "nosuch", "offline"],  # unknown device
        ["sim", "fault", "--config", "{cfg}", "ch01", "offline", "--broker", "tcp://h:1"],
        ["sim", "faults"],  # no --config
        ["sim", "--config", "{cfg}", "--speed", "-1"],
        ["sim", "--config", "{cfg}", "--speed", "2", "faults"],  # --speed only when running
        ["sim", "frobnicate", "--config", "{cfg}"],
        ["sim", "faults", "--config", "{missing}"],
    ],
)
def test_argument_errors_exit_2(
    argv: list[str], config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(cfg=config_path, missing=tmp_path / "nope.yaml") for a in argv]
    try:
        code = main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip()


# ---- the simulator runner --------------------------------------------------------------------


def heater_factory(device_id: str, log: list[str], made: dict[str, Heater] | None = None) -> Any:
    @asynccontextmanager
    async def factory(cfg: StationConfig, speed: float) -> AsyncIterator[dict[str, Heater]]:
        log.append(f"start {device_id} x{speed}")
        heater = Heater()
        if made is not None:
            made[device_id] = heater
        try:
            yield {device_id: heater}
        finally:
            log.append(f"stop {device_id}")

    return factory


async def test_serve_sims_runs_factories_and_routes_faults(
    broker: BrokerAddress, config_path: Path
) -> None:
    cfg = load_config(config_path)
    log: list[str] = []
    made: dict[str, Heater] = {}
    stop, started = asyncio.Event(), asyncio.Event()
    mqtt = StationMqtt(broker, MqttCredentials(), ROOT)
    factories = [heater_factory("a", log, made), heater_factory("b", log, made)]
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(
            serve_sims(cfg, 4.0, stop, factories, mqtt, started=started), name="test-sims"
        )
        async with asyncio.timeout(10):
            await started.wait()
        # Faults are not retained: publish until the listener (subscribing now) passes one on.
        async with asyncio.timeout(10):
            while not made["b"].active:
                await publish_fault(broker, ROOT, "b", "offline")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await made["b"].changed.wait()
        stop.set()
    assert sorted(run.result()) == ["a", "b"]
    assert made["b"].active == {"offline": {}} and made["a"].active == {}
    assert log == ["start a x4.0", "start b x4.0", "stop b", "stop a"]


async def test_serve_sims_refuses_duplicate_device_ids(config_path: Path) -> None:
    cfg = load_config(config_path)
    log: list[str] = []
    with pytest.raises(SimSetupError, match="started twice"):
        await serve_sims(
            cfg, 1.0, asyncio.Event(), [heater_factory("a", log), heater_factory("a", log)]
        )
    assert log == ["start a x1.0", "start a x1.0", "stop a", "stop a"]


def test_swapd_sim_exits_0_on_sigterm(config_path: Path, tmp_path: Path) -> None:
    from sim.benchcfg import bench_config

    # The whole simulated world starts: on free ports, not the example's fixed ones.
    bench = bench_config(config_path, tmp_path / "bench", bus="slcan")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "sim", "--config", str(bench), "--speed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        # Wait for the runner's own start line, then ask it to stop.
        for line in iter(proc.stderr.readline, b""):
            if b"simulators running" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert [orjson.loads(x)["ready"] for x in out.splitlines()] == [True]
    assert b"simulators stopped" in err


@pytest.fixture(autouse=True)
def _no_dirty_registry() -> Iterator[None]:
    from sim.runner import SIM_FACTORIES

    before = list(SIM_FACTORIES)
    yield
    assert before == SIM_FACTORIES


async def test_listener_resubscribes_after_the_broker_restarts() -> None:
    heater = Heater()
    first = EmbeddedBroker()
    await first.start()
    port = first.address.port
    listener = FaultListener(first.address, ROOT, {"h": heater}, max_backoff_s=0.2)
    async with running(listener):
        await first.stop()
        async with asyncio.timeout(10):
            while listener.subscribed.is_set():
                await asyncio.sleep(0.01)
        async with EmbeddedBroker(port=port) as second:
            async with asyncio.timeout(10):
                await listener.subscribed.wait()
            await publish_fault(second.address, ROOT, "h", "offline")
            await heater.wait_change()
    assert heater.active == {"offline": {}}


async def test_embedded_broker_stop_is_bounded_with_a_subscriber_still_connected() -> None:
    """amqtt 0.12 hangs in shutdown after a QoS 1 delivery to a still-connected subscriber
    (docs/demo.md); EmbeddedBroker.stop gives up waiting and cancels amqtt's tasks."""
    heater = Heater()
    broker = EmbeddedBroker(stop_timeout_s=0.5)
    await broker.start()
    port = broker.address.port
    listener = FaultListener(broker.address, ROOT, {"h": heater}, max_backoff_s=0.2)
    async with running(listener):
        await publish_fault(broker.address, ROOT, "h", "offline")
        await heater.wait_change()
        async with asyncio.timeout(15):
            await broker.stop()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


def test_station_mqtt_from_config_and_override(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    client_cert = ca.issue_cert("bench@example")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    client_cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "client.pem")
    edit = {
        "  host: 127.0.0.1\n  port: 1883\n": (
            "  host: broker.example\n  port: 8883\n  username: bench\n  password: s3cret\n"
            f"  tls: {{ca_file: {tmp_path / 'ca.pem'}, cert_file: {tmp_path / 'client.pem'},"
            f" key_file: {tmp_path / 'client.pem'}, verify_hostname: false}}\n"
        )
    }
    cfg = load_config(station_copy(tmp_path, edit))
    target = station_mqtt(cfg)
    assert target.root == "swapstation/v1/demo-01"
    assert target.broker == BrokerAddress("broker.example", 8883, tls=True)
    assert (target.credentials.username, target.credentials.password) == ("bench", "s3cret")
    ctx = target.credentials.tls_context
    assert ctx is not None and ctx.check_hostname is False
    plain = station_mqtt(cfg, "mqtt://127.0.0.1:1884")
    assert plain.broker == BrokerAddress("127.0.0.1", 1884)
    assert plain.credentials == MqttCredentials()
