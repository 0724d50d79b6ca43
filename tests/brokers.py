"""Other real MQTT brokers for the contract tests, each a private process on free loopback ports:
NATS server with its MQTT gateway, and a RabbitMQ node with its MQTT plugin. Both speak MQTT
3.1.1 only. The machine's own services may hold the default ports (1883, 4222, 4369, 5672,
25672): nothing here uses a default port."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port


def _wait_listening(
    proc: subprocess.Popen[bytes], port: int, timeout_s: float, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def nats_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if found is None:
        raise RuntimeError("nats-server not installed: `make test` installs it with apt-get")
    return found


class NatsBroker:
    """nats-server with JetStream (the MQTT gateway keeps sessions, retained messages and QoS 1
    state in streams) in a temp dir. Starts in well under a second."""

    name = "nats"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.client_port = free_port()
        self.log = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        conf = self.workdir / "nats.conf"
        # The MQTT gateway needs a server_name and JetStream.
        conf.write_text(
            f'server_name: "swapd-test-{self.port}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / "js"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n"
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [nats_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        _wait_listening(self.proc, self.port, timeout_s, "nats-server", self.log)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def rabbitmq_server_script() -> str:
    # Run the package's own script, not /usr/sbin/rabbitmq-server: Debian's wrapper switches
    # to the `rabbitmq` user, which cannot write our temp dir.
    for pattern in (
        "/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server",
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    raise RuntimeError("rabbitmq-server not installed: `make test` installs it with apt-get")


def epmd_binary() -> str:
    found = shutil.which("epmd") or next(iter(glob.glob("/usr/lib/erlang/erts-*/bin/epmd")), None)
    if found is None:
        raise RuntimeError("epmd (erlang-base) not installed; it comes with rabbitmq-server")
    return found


class RabbitBroker:
    """A private RabbitMQ node with the MQTT plugin: its own node name, data and log dirs,
    Erlang cookie, AMQP, distribution, epmd and MQTT ports. ~11-16 s to start, so the test
    session starts it once. Our own epmd runs in the foreground as a child (the node would
    otherwise start a daemon epmd that outlives the test)."""

    name = "rabbitmq"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"swapdtest{self.port}@localhost"
        self.log = workdir / "rabbitmq.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        w = self.workdir
        home = w / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"SWAPDTEST{os.urandom(8).hex().upper()}")
            cookie.chmod(0o400)
        (w / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (w / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(w / "plugins-expand"),
            RABBITMQ_PID_FILE=str(w / "rabbitmq.pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(w / "feature_flags"),
        )
        return env

    def start(self, timeout_s: float = 90.0) -> None:
        env = self._env()
        with self.log.open("ab") as out:
            self.epmd = subprocess.Popen(
                [epmd_binary(), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            _wait_listening(self.epmd, self.epmd_port, 10, "epmd", self.log)
            self.proc = subprocess.Popen(
                [rabbitmq_server_script()],
                env=env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_listening(self.proc, self.port, timeout_s, "rabbitmq-server", self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The script execs the Erlang VM; its helpers (erl_child_setup, inet_gethost) share
            # its session: end the whole group.
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.proc = None
        _stop(self.epmd, 5)
        self.epmd = None
