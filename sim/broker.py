"""Brokers for the bench: an embedded amqtt broker, a private Mosquitto, or an external URL.

`EmbeddedBroker` runs amqtt (pure Python, MQTT 3.1.1 only) inside the running event loop on a
free loopback port, so `swapd demo` needs nothing installed. `MosquittoBroker` spawns a private
`mosquitto` process (MQTT 5, faster) when the binary exists. `open_broker(spec)` picks one from a
spec string: `embedded`, `mosquitto`, or `mqtt://host:port` for a broker someone else runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from drivers.core.log import get_logger
from sim.ports import free_port

LOOPBACK = "127.0.0.1"
_log = get_logger("sim.broker")


class BrokerError(Exception):
    """A broker could not be started or a broker URL is unusable."""


class BadBrokerUrl(BrokerError, ValueError):
    """A `--broker` value that is not `mqtt://host:port` (or `embedded` / `mosquitto`)."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (default 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise BadBrokerUrl(f"broker URL must be mqtt://host:port or mqtts://host:port, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadBrokerUrl(f"broker URL has a path or query: {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as e:  # urlsplit raises on a non-numeric or out-of-range port
        raise BadBrokerUrl(f"bad port in broker URL {url!r}: {e}") from None
    return BrokerAddress(parts.hostname, port, tls)


class _Broker:
    """What both brokers share: an address once started, `url`, async context manager."""

    @property
    def address(self) -> BrokerAddress:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self.address.url

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class EmbeddedBroker(_Broker):
    """amqtt inside the running loop on a loopback port (0 = a free one, read back after start).

    Only the anonymous-auth plugin is loaded: amqtt's defaults also publish `$SYS` topics every
    20 s and log every packet, which the demo does not want.
    """

    def __init__(self, host: str = LOOPBACK, port: int = 0, stop_timeout_s: float = 2.0) -> None:
        self._host = host
        self._port = port
        self._stop_timeout_s = stop_timeout_s
        self._broker: Any = None

    @property
    def address(self) -> BrokerAddress:
        if self._broker is None:
            raise BrokerError("embedded broker is not running")
        return BrokerAddress(self._host, self._port)

    async def start(self) -> None:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError as AmqttBrokerError

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except AmqttBrokerError as e:
            raise BrokerError(
                f"embedded broker did not start on {self._host}:{self._port}: {e}"
            ) from e
        # amqtt keeps no public handle on its listening socket; port 0 needs the bound one.
        server = broker._servers["default"].instance
        self._port = int(server.sockets[0].getsockname()[1])
        self._broker = broker

    async def stop(self) -> None:
        """Shut amqtt down within `stop_timeout_s`, then by force.

        Measured: amqtt 0.12's shutdown can hang for ever when a client that received a QoS 1
        message is still connected (a handler's reader loop swallows its cancellation and the
        broker waits for it). Stopping clients first avoids it; this bound makes it harmless.
        """
        broker, self._broker = self._broker, None
        if broker is None:
            return
        shutdown = asyncio.create_task(broker.shutdown(), name="amqtt-shutdown")
        done, _ = await asyncio.wait({shutdown}, timeout=self._stop_timeout_s)
        if shutdown in done:
            shutdown.result()
            return
        _log.warning("embedded broker shutdown hung; cancelling its tasks", port=self._port)
        for server in broker._servers.values():
            server.instance.close()
        await _cancel_amqtt_tasks()


async def _cancel_amqtt_tasks(rounds: int = 5) -> None:
    """Cancel every task running amqtt code, again while some swallow the cancellation."""
    import amqtt

    package = os.path.dirname(amqtt.__file__)
    me = asyncio.current_task()

    def amqtt_task(t: asyncio.Task[Any]) -> bool:
        code = getattr(t.get_coro(), "cr_code", None)
        return code is not None and code.co_filename.startswith(package)

    for _ in range(rounds):
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done() and amqtt_task(t)]
        if not left:
            return
        for t in left:
            t.cancel()
        await asyncio.wait(left, timeout=0.5)
    _log.error("embedded broker tasks would not stop")


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


class MosquittoBroker(_Broker):
    """A private Mosquitto process on a loopback port, its config and log in a temp directory."""

    def __init__(self, host: str = LOOPBACK, port: int = 0, start_timeout_s: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> BrokerAddress:
        if self._proc is None:
            raise BrokerError("mosquitto is not running")
        return BrokerAddress(self._host, self._port)

    async def start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self._port = self._port or free_port(self._host)
        self._dir = tempfile.TemporaryDirectory(prefix="swapd-mosquitto-")
        workdir = Path(self._dir.name)
        log = workdir / "mosquitto.log"
        conf = workdir / "mosquitto.conf"
        # As root Mosquitto switches to user `mosquitto` and loses our files unless told not to.
        lines = [
            "user root" if os.geteuid() == 0 else "",
            "persistence false",
            "allow_anonymous true",
            f"log_dest file {log}",
            "log_type error",
            "log_type warning",
            f"listener {self._port} {self._host}",
        ]
        conf.write_text("\n".join(lines) + "\n")
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(self._start_timeout_s):
                while True:
                    if self._proc.returncode is not None:
                        text = log.read_text() if log.exists() else ""
                        raise BrokerError(f"mosquitto exited at start: {text.strip()}")
                    try:
                        _, writer = await asyncio.open_connection(self._host, self._port)
                    except OSError:
                        await asyncio.sleep(0.02)
                        continue
                    writer.close()
                    await writer.wait_closed()
                    return
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


@contextlib.asynccontextmanager
async def open_broker(spec: str = "embedded") -> AsyncIterator[BrokerAddress]:
    """`embedded` (amqtt in this loop), `mosquitto` (private process) or `mqtt://host:port`."""
    if spec == "embedded":
        async with EmbeddedBroker() as embedded:
            yield embedded.address
    elif spec == "mosquitto":
        async with MosquittoBroker() as mosquitto:
            yield mosquitto.address
    else:
        yield parse_broker_url(spec)
