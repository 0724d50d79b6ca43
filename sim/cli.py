"""`swapd sim`: run the simulators (`swapd sim --config PATH`), inject a fault into a running one
(`swapd sim fault ...`), list the faults each device type supports (`swapd sim faults ...`).

Only argparse is imported here: `edge/cli/commands.py` imports this module for every command,
so the handlers import the rest when they run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edge.cli.base import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, Handler


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _param(text: str) -> tuple[str, Any]:
    """`k=v`; v is read as JSON when it parses (3, 2.5, true, "x", [1,2]), else as a string."""
    import orjson

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return key, value


def register_sim(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser(
        "sim",
        help="run the simulated devices; `sim fault` / `sim faults` inject and list faults",
        description="Without an action: run every simulated device the config describes.",
    )
    p.add_argument("--config", help="station config (YAML)")
    p.add_argument("--speed", type=_positive_float, help="time factor (default: config sim.speed)")
    actions = p.add_subparsers(dest="sim_action", metavar="[ACTION]", title="actions")

    f = actions.add_parser("fault", help="inject (or clear) a fault in a running simulator")
    # SUPPRESS: `swapd sim --config X fault ...` must keep the parent's value.
    f.add_argument("--config", default=argparse.SUPPRESS, help="station config (YAML)")
    f.add_argument("device_id", metavar="DEVICE_ID")
    f.add_argument("fault", metavar="FAULT")
    f.add_argument("--clear", action="store_true", help="clear the fault instead")
    f.add_argument(
        "--param",
        dest="params",
        type=_param,
        action="append",
        default=[],
        metavar="K=V",
        help="fault parameter (repeatable); V is JSON when it parses",
    )
    f.add_argument("--broker", help="mqtt://host:port instead of the config's mqtt section")

    ls = actions.add_parser("faults", help="list the faults each simulated device type supports")
    ls.add_argument("--config", default=argparse.SUPPRESS, help="station config (YAML)")
    ls.add_argument("--json", action="store_true", help="one JSON object instead of text")

    def run(args: argparse.Namespace) -> int:
        if args.config is None:
            p.error("--config is required")
        if args.sim_action is None:
            from sim.runner import run_sims

            return run_sims(args.config, args.speed)
        if args.speed is not None:
            p.error(f"--speed applies to running the simulators, not to `{args.sim_action}`")
        if args.sim_action == "fault":
            return _fault(args)
        return _faults(args)

    handlers["sim"] = run


def register_demo(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser(
        "demo",
        help="simulators + daemon + embedded broker + live view, in one process",
        description="A whole simulated station. Without a terminal on stdout it runs headless "
        "for 60 s. --headless prints one JSON summary line at the end.",
    )
    p.add_argument("--config", default="config/station.yaml", help="station config (YAML)")
    p.add_argument("--headless", action="store_true", help="no view; JSON summary at the end")
    p.add_argument("--duration", type=_positive_float, help="wall seconds (headless; default 60)")
    p.add_argument("--speed", type=_positive_float, help="time factor (default: config sim.speed)")
    p.add_argument(
        "--broker", default="embedded", help="embedded (default), mosquitto or mqtt://host:port"
    )
    p.add_argument("--scenario", help="scheduler scenario YAML: arrivals and events to replay")
    p.add_argument("--state-dir", help="daemon state (journal, outbox); default a temp dir")
    p.add_argument("--seed", type=int, help="world seed (default: config sim.seed)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from sim.demo import DemoOptions, run_demo

        return run_demo(
            DemoOptions(
                config=Path(args.config),
                headless=args.headless,
                duration_s=args.duration,
                speed=args.speed,
                broker=args.broker,
                scenario=Path(args.scenario) if args.scenario else None,
                state_dir=Path(args.state_dir) if args.state_dir else None,
                seed=args.seed,
            )
        )

    handlers["demo"] = run


def load_or_report(path: str) -> Any:
    """The station config, or None after printing every problem (`FILE:LINE: field: msg`)."""
    from drivers.core.datafile import DataFileError
    from edge.config import load_config

    try:
        return load_config(path)
    except DataFileError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None


def _fault(args: argparse.Namespace) -> int:
    import asyncio

    import aiomqtt
    import orjson

    from sim.broker import BadBrokerUrl
    from sim.faults import (
        fault_catalogue,
        publish_fault,
        sim_devices,
        station_mqtt,
        supports,
    )

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    devices = sim_devices([c.id for c in cfg.chargers], [s.id for s in cfg.slots])
    device_type = devices.get(args.device_id)
    if device_type is None:
        print(
            f"swapd: error: no simulated device {args.device_id!r} in {args.config};"
            f" devices: {' '.join(devices)}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    entry = next(d for d in fault_catalogue() if d.device_type == device_type)
    if not supports(entry, args.fault):
        names = " ".join(s.name for s in entry.faults)
        print(
            f"swapd: error: {device_type} {args.device_id!r} has no fault {args.fault!r};"
            f" faults: {names}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        target = station_mqtt(cfg, args.broker)
    except BadBrokerUrl as e:
        print(f"swapd: error: --broker: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    params = dict(args.params)
    try:
        asyncio.run(
            publish_fault(
                target.broker,
                target.root,
                args.device_id,
                args.fault,
                args.clear,
                params,
                target.credentials,
            )
        )
    except aiomqtt.MqttError as e:
        print(f"swapd: error: broker {target.broker.url}: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    result = {
        "ok": True,
        "topic": f"{target.root}/sim/{args.device_id}/fault",
        "payload": {"fault": args.fault, "clear": args.clear, "params": params},
    }
    print(orjson.dumps(result).decode())
    return EXIT_OK


def _faults(args: argparse.Namespace) -> int:
    import orjson

    from sim.faults import fault_catalogue, sim_devices

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_BAD_INPUT
    devices = sim_devices([c.id for c in cfg.chargers], [s.id for s in cfg.slots])
    catalogue = fault_catalogue()
    if args.json:
        doc = {
            d.device_type: {
                "source": d.source,
                "devices": [k for k, v in devices.items() if v == d.device_type],
                "faults": [
                    {"name": s.name, "description": s.description, "params": list(s.params)}
                    for s in d.faults
                ],
            }
            for d in catalogue
        }
        print(orjson.dumps(doc).decode())
        return EXIT_OK
    for d in catalogue:
        ids = [k for k, v in devices.items() if v == d.device_type]
        print(f"{d.device_type}: {len(ids)} device(s): {' '.join(ids)}")
        print(f"  source: {d.source}")
        for s in d.faults:
            params = f"  [params: {', '.join(s.params)}]" if s.params else ""
            print(f"  {s.name:<20} {s.description}{params}")
        print()
    return EXIT_OK
