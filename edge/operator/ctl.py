"""The local operator's socket inside the daemon (the `swapd ctl` client is `edge.cli.ctl`).

Protocol: JSON lines. Request `{"command": NAME, "params": {...}}`; reply `{"ok": true,
"result": {...}}` or `{"ok": false, "error": {"code": CODE, "message": TEXT}}` with the result
codes of the MQTT contract. Every request goes to the command service with the caller's
credentials (SO_PEERCRED: uid, gid, pid), which it logs. The socket is created mode 0660 and,
when configured, handed to the operators' group (not the service's own group).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from drivers.core.log import get_logger
from edge.command_types import ErrorCode, Origin, Rejected

log = get_logger("ctl")

DEFAULT_SOCKET = "/run/swapd/ctl.sock"
MAX_LINE = 64 * 1024


class CommandHandler(Protocol):
    async def execute(
        self, name: str, params: Mapping[str, Any], origin: Origin
    ) -> dict[str, Any]: ...


class CtlError(RuntimeError):
    pass


def peer_origin(sock: socket.socket | None) -> Origin:
    """The ctl origin of a connection: the kernel's word on who is at the other end."""
    if sock is None:
        return Origin("ctl")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return Origin("ctl")
    pid, uid, gid = struct.unpack("3i", raw)
    return Origin("ctl", uid=uid, gid=gid, pid=pid)


class CtlServer:
    def __init__(
        self, path: Path | str, handler: CommandHandler, *, group: str | None = None
    ) -> None:
        self.path = Path(path)
        self.handler = handler
        self.group = group
        self._server: asyncio.Server | None = None
        self.bad_requests = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.stat().st_mode):
                # A stale socket of a previous run: the state-dir lock (edge.app.daemon) makes
                # sure no other daemon of this station is alive to own it.
                self.path.unlink()
        old = os.umask(0o117)  # never world-accessible, not even for an instant
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if self.group is not None:
            try:
                shutil.chown(self.path, group=self.group)
            except (LookupError, PermissionError) as e:
                await self.stop()
                raise CtlError(f"ctl socket {self.path}: group {self.group!r}: {e}") from e

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def serve(self) -> None:
        """Run until cancelled (a supervised task of the daemon)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        origin = peer_origin(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    self.bad_requests += 1
                    await self._reply(writer, _error("bad_json", "request line too long"))
                    return
                if not line:
                    return
                await self._reply(writer, await self._one(line, origin))
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _one(self, line: bytes, origin: Origin) -> dict[str, Any]:
        try:
            req = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.bad_requests += 1
            log.info("ctl request refused", code="bad_json", **origin.fields())
            return _error(ErrorCode.BAD_JSON, "request is not JSON")
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            self.bad_requests += 1
            log.info("ctl request refused", code="invalid_params", **origin.fields())
            return _error(ErrorCode.INVALID_PARAMS, "request needs a string 'command'")
        params = req.get("params", {})
        if not isinstance(params, dict):
            self.bad_requests += 1
            log.info("ctl request refused", code="invalid_params", **origin.fields())
            return _error(ErrorCode.INVALID_PARAMS, "'params' must be an object")
        try:
            result = await self.handler.execute(req["command"], params, origin)
        except Rejected as e:
            return _error(e.code, e.message)
        return {"ok": True, "result": result}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(orjson.dumps(msg) + b"\n")
        await writer.drain()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(code), "message": message}}
