"""Free loopback ports for simulators, brokers and test daemons, safe across parallel runs.

A port found free with `bind(port 0)` and released before its server binds it can be taken in
between: by an outgoing connection (the kernel picks its local port from the same ephemeral
range) or by another parallel run. Five fault-campaign jobs on one machine hit this ("Could not
start listen"). So ports here come from below the ephemeral range, where no outgoing connection
lands, and each is leased in a registry shared by every process on the machine for `LEASE_S`:
long enough for its server to bind it, after which the bind itself keeps others off.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LEASE_S = 600.0
_SPAN = 12000  # ports below the ephemeral range to draw from


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _range() -> tuple[int, int]:
    high = _ephemeral_low()
    return max(1024, high - _SPAN), high


def _registry() -> Path:
    return Path(tempfile.gettempdir()) / f"swapd-port-leases-{os.getuid()}.json"


@contextlib.contextmanager
def _locked_leases() -> Iterator[dict[str, float]]:
    """The lease registry (port -> expiry, wall time), read and written under an exclusive lock."""
    path = _registry()
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            leases: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            leases = {}
        now = time.time()
        leases = {p: t for p, t in leases.items() if t > now}
        yield leases
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(leases))
        tmp.replace(path)


def _bindable(host: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        return None
    return s


class LoopbackPorts:
    """Leased loopback ports, all different. Each stays bound until close(), so even a process
    that ignores the registry cannot bind it while a config naming it is being written."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._held: list[socket.socket] = []

    def take(self) -> int:
        low, high = _range()
        with _locked_leases() as leases:
            for _ in range(500):
                port = random.randrange(low, high)
                if str(port) in leases:
                    continue
                s = _bindable(self.host, port)
                if s is None:
                    continue
                self._held.append(s)
                leases[str(port)] = time.time() + LEASE_S
                return port
        raise OSError(f"no free loopback port in {low}..{high - 1}")

    def close(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()


def free_port(host: str = "127.0.0.1") -> int:
    """One leased port, released for its server to bind."""
    ports = LoopbackPorts(host)
    try:
        return ports.take()
    finally:
        ports.close()
