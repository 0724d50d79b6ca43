"""Test base: task-leak check, a manual clock, and a private Mosquitto broker per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.ports import free_port as free_port  # one lease registry for every test port
from tests.doubles import ManualClock
from tests.release_fixtures import release  # noqa: F401  (session fixture: the installed wheel)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running on its loop."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    # Give cancelled tasks one turn to finish unwinding.
    for _ in range(3):
        left = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not left:
            return
        await asyncio.sleep(0)
    for t in left:
        t.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    names = ", ".join(sorted(t.get_name() for t in left))
    pytest.fail(f"test left tasks running: {names}")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto not installed: `make test` installs it with apt-get")
    return found


class Broker:
    """A private Mosquitto process on a free loopback port, with stop, kill -9 and restart."""

    name = "mosquitto"

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_conf(self) -> None:
        # `user root`: started as root, mosquitto would drop to `mosquitto` and lose our files.
        lines = [
            "user root" if os.geteuid() == 0 else "",
            "persistence false",
            "allow_anonymous true",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {self.port} 127.0.0.1",
            self.extra_conf,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        self._write_conf()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.log.read_text() if self.log.exists() else ''}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[type[Broker]]:
    """For tests that need a broker with their own config (TLS listeners, ACLs)."""
    made: list[Broker] = []

    class _Factory(Broker):
        def __init__(self, extra_conf: str = "", port: int | None = None) -> None:
            d = tmp_path / f"broker{len(made)}"
            d.mkdir()
            super().__init__(d, extra_conf, port)
            made.append(self)

    yield _Factory
    for b in made:
        b.stop()


# ---- other brokers (tests/brokers.py): NATS's MQTT gateway and RabbitMQ's MQTT plugin ----------

BROKER_NAMES = ("mosquitto", "nats", "rabbitmq")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Any]:
    from tests.brokers import NatsBroker

    broker = NatsBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One node for the whole session (it takes ~11-16 s to start). Tests sharing it use a
    station id of their own: retained messages outlive a test."""
    from tests.brokers import RabbitBroker

    broker = RabbitBroker(tmp_path_factory.mktemp("rabbitmq"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=BROKER_NAMES)
def any_broker(request: pytest.FixtureRequest) -> Any:
    """Each real broker in turn: the contract must hold on all of them."""
    return request.getfixturevalue(request.param)
