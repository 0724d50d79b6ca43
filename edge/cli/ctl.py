"""`swapd ctl`: the local operator's client of the daemon's control socket (the server side is
`edge.operator.ctl`). Blocking and small: the CLI has no event loop."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import orjson

from edge.cli.base import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, Handler

DEFAULT_SOCKET = "/run/swapd/ctl.sock"
_BAD_INPUT_CODES = {"bad_json", "invalid_params", "unknown_command", "out_of_range"}


def request(
    path: str, command: str, params: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    """One request over the socket. Raises OSError."""
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


def _params(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    c = args.ctl_command
    if c == "start-swap":
        return "start_swap", {
            "vehicle_id": args.vehicle_id,
            "pack_type": args.pack_type,
            "announced_pack_id": args.pack_id,
        }
    if c == "manual":
        return "manual", {"enabled": not args.end, "swap_id": args.swap_id}
    if c == "inventory-set":
        place = None if args.place == "none" else args.place
        p: dict[str, Any] = {"pack_id": args.pack_id, "place": place}
        if args.pack_type:
            p["pack_type"] = args.pack_type
        return "inventory_set", p
    if c in ("retry-step", "refit-original"):
        return c.replace("-", "_"), {"swap_id": args.swap_id}
    if c in ("reset-slot", "enable-slot"):
        return c.replace("-", "_"), {"slot_id": args.slot_id}
    if c == "disable-slot":
        return "disable_slot", {"slot_id": args.slot_id, "reason": args.reason}
    if c == "set-mode":
        return "set_mode", {"mode": args.mode}
    return c.replace("-", "_"), {}


def run_ctl(args: argparse.Namespace) -> int:
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


def register(sub: Any, handlers: dict[str, Handler]) -> None:
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

    swap_help = "the held swap this acts on (see `status`); another swap's id is rejected"
    cmd("status", "sequence state, inventory, alarms")
    s = cmd("start-swap", "start a swap for the vehicle on the platform")
    s.add_argument("--vehicle-id", required=True)
    s.add_argument("--pack-type", required=True)
    s.add_argument("--pack-id", required=True, help="the pack id the vehicle announces")
    cmd("reset-fault", "clear the emergency-stop latch (chain must be healthy)")
    r = cmd("retry-step", "re-run the failed step(s) of a held swap")
    r.add_argument("--swap-id", required=True, help=swap_help)
    f = cmd("refit-original", "put the original pack back into the held vehicle")
    f.add_argument("--swap-id", required=True, help=swap_help)
    m = cmd("manual", "hand the held swap to an attendant (both units halted)")
    m.add_argument("--swap-id", required=True, help=swap_help)
    m.add_argument("--end", action="store_true", help="end manual mode once inventory is right")
    i = cmd("inventory-set", "correct where a pack is")
    i.add_argument("--pack-id", required=True)
    i.add_argument(
        "--place", required=True, help="slot:<id>, vehicle, shuttle, buffer, stacker or none"
    )
    i.add_argument("--pack-type")
    rs = cmd("reset-slot", "clear one slot's BMS-lost latch (after re-plugging its pack)")
    rs.add_argument("slot_id")
    ds = cmd("disable-slot", "take a slot out of service (output off, no pack in or out)")
    ds.add_argument("slot_id")
    ds.add_argument("--reason", default="")
    es = cmd("enable-slot", "put a slot back in service")
    es.add_argument("slot_id")
    sm = cmd("set-mode", "normal, maintenance (no new swaps) or drain")
    sm.add_argument("mode", choices=["normal", "maintenance", "drain"])
    handlers["ctl"] = run_ctl
