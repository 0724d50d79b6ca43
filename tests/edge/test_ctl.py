"""`swapd ctl` against the control socket served by a coordinator on the simulated PLC."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from drivers.core.clock import SystemClock
from edge.alarms import AlarmManager
from edge.operator.commands import StationCommands
from edge.operator.config import CommandsConfig
from edge.operator.ctl import CtlError, CtlServer
from edge.operator.service import CommandService
from edge.state import GridState, StationState
from edge.swap.coordinator import SwapCoordinator
from tests.edge.swap_fixtures import live_rig


def service_for(coord: SwapCoordinator) -> CommandService:
    """The station's command service in front of a bare swap coordinator."""
    clock = SystemClock()
    state = StationState("st", GridState(cap_kw=100, limit_kw=100), alarms=AlarmManager(clock))
    station = StationCommands(state, clock)
    station.swap = coord
    return CommandService(CommandsConfig(), station, clock=clock)


async def swapd_ctl(sock: Path, *args: str) -> tuple[int, Any, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "ctl",
        *args,
        "--socket",
        str(sock),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    doc = orjson.loads(out.splitlines()[-1]) if out.strip() else None
    return proc.returncode, doc, err.decode()


async def raw(sock: Path, line: bytes) -> dict[str, Any]:
    r, w = await asyncio.open_unix_connection(str(sock))
    w.write(line)
    await w.drain()
    reply: dict[str, Any] = orjson.loads(await r.readline())
    w.close()
    await w.wait_closed()
    return reply


async def test_ctl_commands_exit_codes_and_socket_mode(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "ctl.sock"
    group = grp.getgrgid(os.getgid()).gr_name
    async with live_rig(tmp_path, speed=100.0) as rig:
        server = CtlServer(sock, service_for(rig.coord), group=group)
        await server.start()
        try:
            mode = stat.S_IMODE(sock.stat().st_mode)
            assert mode == 0o660 and sock.stat().st_gid == os.getgid()
            rc, doc, _ = await swapd_ctl(sock, "status")
            assert rc == 0 and doc["mode"] == "idle" and len(doc["inventory"]) == 3
            rig.vehicle.arrive()
            rig.sim.inject_step_fault("rack", "fetch")
            rc, doc, _ = await swapd_ctl(
                sock,
                "start-swap",
                "--vehicle-id",
                "V1",
                "--pack-type",
                "T20",
                "--pack-id",
                "P-CAR-1",
            )
            assert rc == 0 and doc["full_slot"] == "S2"
            rc, doc, err = await swapd_ctl(
                sock,
                "start-swap",
                "--vehicle-id",
                "V2",
                "--pack-type",
                "T20",
                "--pack-id",
                "P-CAR-2",
            )
            assert rc == 1 and doc["error"]["code"] == "rejected" and "already" in err
            await rig.events.wait_for(lambda: rig.coord.core.mode.value == "held")
            rc, doc, _ = await swapd_ctl(sock, "reset-fault")
            assert rc == 1 and "latch" in doc["error"]["message"]
            rc, doc, _ = await swapd_ctl(
                sock, "inventory-set", "--pack-id", "P-002", "--place", "roof"
            )
            assert rc == 2 and doc["error"]["code"] == "invalid_params"
            # A well-formed place naming no slot of this station: the station's own check,
            # still before its mode rules (a step is running now).
            rc, doc, _ = await swapd_ctl(
                sock, "inventory-set", "--pack-id", "P-002", "--place", "slot:S99"
            )
            assert rc == 2 and doc["error"]["code"] == "invalid_params", doc
            swap_id = rig.coord.core.swap.swap_id  # type: ignore[union-attr]
            rc, doc, err = await swapd_ctl(sock, "retry-step")
            assert rc == 2 and "--swap-id" in err  # required
            rc, doc, _ = await swapd_ctl(sock, "retry-step", "--swap-id", "SW-stale")
            assert rc == 1 and doc["error"]["code"] == "rejected"
            assert "not the current swap" in doc["error"]["message"]
            rc, doc, _ = await swapd_ctl(sock, "retry-step", "--swap-id", swap_id)
            assert rc == 0 and doc["mode"] == "running"
            await rig.events.wait_for(lambda: rig.events.has("swap.completed"))
            rc, doc, _ = await swapd_ctl(sock, "refit-original", "--swap-id", swap_id)
            assert rc == 1
            rc, doc, _ = await swapd_ctl(sock, "manual", "--end", "--swap-id", swap_id)
            assert rc == 1
            # protocol errors on the raw socket
            assert (await raw(sock, b"not json\n"))["error"]["code"] == "bad_json"
            assert (await raw(sock, b'{"command": "fly"}\n'))["error"]["code"] == "unknown_command"
            assert (await raw(sock, b'{"params": 1}\n'))["error"]["code"] == "invalid_params"
            ok = await raw(
                sock,
                b'{"command": "inventory_set", "params": {"pack_id": "P-CAR-1", "place": "slot:S6"}}\n',
            )
            assert (
                ok["ok"]
                and {"pack_id": "P-CAR-1", "pack_type": "T20", "place": "slot:S6"}
                in ok["result"]["inventory"]
            )
            assert server.bad_requests == 2
            huge = await raw(
                sock, b'{"command": "status", "params": {"x": "' + b"a" * 70_000 + b'"}}\n'
            )
            assert huge["error"]["code"] == "bad_json" and server.bad_requests == 3
            rc, doc, _ = await swapd_ctl(sock, "status")
            assert rc == 0  # the server carries on
        finally:
            await server.stop()
    assert not sock.exists()


async def test_ctl_socket_group_must_exist(tmp_path: Path) -> None:
    class Nothing:
        async def execute(self, command: str, params: Any, origin: Any) -> dict[str, Any]:
            return {}

    server = CtlServer(tmp_path / "c.sock", Nothing(), group="no-such-group-swapd")
    with pytest.raises(CtlError, match="no-such-group-swapd"):
        await server.start()
    assert not (tmp_path / "c.sock").exists()


async def test_every_ctl_command_is_logged_with_the_callers_credentials(tmp_path: Path) -> None:
    """SO_PEERCRED: the kernel's uid/gid/pid of the `swapd ctl` process, in the log line."""
    sock = tmp_path / "ctl.sock"
    async with live_rig(tmp_path, speed=100.0) as rig:
        server = CtlServer(sock, service_for(rig.coord))
        await server.start()
        try:
            with capture_logs() as logs:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "edge",
                    "ctl",
                    "--socket",
                    str(sock),
                    "status",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
                rc, _, _ = await swapd_ctl(sock, "reset-slot", "s99")
                assert rc == 1
        finally:
            await server.stop()
    done = [e for e in logs if e["event"] == "command carried out"]
    assert len(done) == 1
    assert done[0]["command"] == "status" and done[0]["route"] == "ctl"
    assert done[0]["uid"] == os.getuid() and done[0]["gid"] == os.getgid()
    assert done[0]["pid"] == proc.pid
    refused = [e for e in logs if e["event"] == "command refused"]
    assert len(refused) == 1 and refused[0]["command"] == "reset_slot"
    assert refused[0]["uid"] == os.getuid() and refused[0]["code"] == "rejected"
