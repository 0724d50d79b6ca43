"""The local operator interface: a Unix socket inside the daemon and the `swapd ctl` client.

Protocol: JSON lines. Request `{"command": NAME, "params": {...}}`; reply `{"ok": true,
"result": {...}}` or `{"ok": false, "error": {"code": CODE, "message": TEXT}}` with the codes of
the MQTT command results (bad_json, invalid_params, unknown_command, rejected, internal). The
socket is created mode 0660 and, when configured, handed to an operators' group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from drivers.core.log import get_logger

log = get_logger("ctl")

DEFAULT_SOCKET = "/run/swapd/ctl.sock"
MAX_LINE = 64 * 1024


class CommandHandler(Protocol):
    async def execute(self, command: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Carry out one command; raise `Rejected(message, code)` to refuse it."""
        ...


class CtlError(RuntimeError):
    pass


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
                self.path.unlink()  # a stale socket from a previous run
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
                await self._reply(writer, await self._one(line))
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _one(self, line: bytes) -> dict[str, Any]:
        try:
            req = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.bad_requests += 1
            return _error("bad_json", "request is not JSON")
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            self.bad_requests += 1
            return _error("invalid_params", "request needs a string 'command'")
        params = req.get("params", {})
        if not isinstance(params, dict):
            self.bad_requests += 1
            return _error("invalid_params", "'params' must be an object")
        from edge.swap.sequence import Rejected

        try:
            result = await self.handler.execute(req["command"], params)
        except Rejected as e:
            return _error(e.code, e.message)
        except Exception as e:  # noqa: BLE001 - one bad command never stops the server
            log.exception("ctl command failed", command=req["command"])
            return _error("internal", str(e))
        return {"ok": True, "result": result}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(orjson.dumps(msg) + b"\n")
        await writer.drain()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


# ----- client (`swapd ctl`)


def request(
    path: str, command: str, params: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    """One request over the socket (blocking; the CLI has no loop). Raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(orjson.dumps({"command": command, "params": params}) + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = orjson.loads(buf)
    return reply


_BAD_INPUT_CODES = {"bad_json", "invalid_params", "unknown_command", "out_of_range"}


def _params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    c = args.ctl_command
    if c == "start-swap":
        return "start_swap", {
            "vehicle_id": args.vehicle_id,
            "pack_type": args.pack_type,
            "announced_pack_id": args.pack_id,
        }
    if c == "manual":
        return "manual", {"enabled": not args.end}
    if c == "inventory-set":
        place = None if args.place == "none" else args.place
        p: dict[str, Any] = {"pack_id": args.pack_id, "place": place}
        if args.pack_type:
            p["pack_type"] = args.pack_type
        return "inventory_set", p
    if c in ("retry-step", "refit-original") and args.swap_id:
        return c.replace("-", "_"), {"swap_id": args.swap_id}
    return c.replace("-", "_"), {}


def run_ctl(args: argparse.Namespace) -> int:
    from edge.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME

    if args.ctl_command is None:
        print("swapd ctl: a command is required (see --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    command, params = _params(args)
    path = args.socket or os.environ.get("SWAPD_CTL_SOCKET") or DEFAULT_SOCKET
    try:
        reply = request(path, command, params, args.timeout_s)
    except (OSError, orjson.JSONDecodeError) as e:
        print(f"swapd ctl: cannot talk to the daemon at {path}: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    sys.stdout.write(
        orjson.dumps(reply.get("result") if reply.get("ok") else reply).decode() + "\n"
    )
    if reply.get("ok"):
        return EXIT_OK
    err = reply.get("error") or {}
    print(f"swapd ctl: {err.get('code')}: {err.get('message')}", file=sys.stderr)
    return EXIT_BAD_INPUT if err.get("code") in _BAD_INPUT_CODES else EXIT_RUNTIME


def register(sub: Any, handlers: dict[str, Any]) -> None:
    p = sub.add_parser("ctl", help="operator commands to the running daemon (Unix socket)")
    sock_help = f"control socket (env SWAPD_CTL_SOCKET, default {DEFAULT_SOCKET})"
    p.add_argument("--socket", default=None, help=sock_help)
    p.add_argument("--timeout-s", type=float, default=10.0)
    # the same options after the command too (`swapd ctl status --socket X`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help=sock_help)
    common.add_argument("--timeout-s", type=float, default=argparse.SUPPRESS)
    cs = p.add_subparsers(dest="ctl_command", parser_class=type(p))

    def cmd(name: str, help_: str) -> Any:
        return cs.add_parser(name, help=help_, parents=[common])

    cmd("status", "sequence state, inventory, alarms")
    s = cmd("start-swap", "start a swap for the vehicle on the platform")
    s.add_argument("--vehicle-id", required=True)
    s.add_argument("--pack-type", required=True)
    s.add_argument("--pack-id", required=True, help="the pack id the vehicle announces")
    cmd("reset-fault", "clear the emergency-stop latch (chain must be healthy)")
    r = cmd("retry-step", "re-run the failed step(s) of a held swap")
    r.add_argument("--swap-id", help="act only if this is the current swap")
    f = cmd("refit-original", "put the original pack back into the held vehicle")
    f.add_argument("--swap-id", help="act only if this is the current swap")
    m = cmd("manual", "hand the held swap to an attendant (both units halted)")
    m.add_argument("--end", action="store_true", help="end manual mode once inventory is right")
    i = cmd("inventory-set", "correct where a pack is")
    i.add_argument("--pack-id", required=True)
    i.add_argument(
        "--place", required=True, help="slot:<id>, vehicle, shuttle, buffer, stacker or none"
    )
    i.add_argument("--pack-type")
    handlers["ctl"] = run_ctl
