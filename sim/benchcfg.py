"""A private copy of a station config for one bench run: free loopback ports, its own state dir.

`swapd demo` and the integration tests run the daemon and the simulated world side by side on a
machine where another bench (or a real `swapd sim`) may hold the config's fixed ports. The copy
keeps everything else (grid, safety, slots, register maps) and is written as YAML, so the daemon
loads it through the ordinary config loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml

from drivers.core.datafile import read_yaml
from drivers.core.resources import is_builtin
from sim.ports import LoopbackPorts


def bench_config(
    source: Path | str,
    out_dir: Path | str,
    *,
    bus: Literal["slcan", "virtual"] = "virtual",
    mqtt_host: str | None = None,
    mqtt_port: int | None = None,
    mqtt_protocol: Literal["3.1.1", "5"] | None = None,
    state_dir: Path | str | None = None,
    speed: float | None = None,
) -> Path:
    """Write `<out_dir>/station.yaml`: chargers, robot and SLCAN ports moved to free loopback
    ports (virtual CAN channels unique to this process with `bus="virtual"`), relative paths
    made absolute (`builtin:` names kept). Returns its path."""
    src = Path(source).resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, _ = read_yaml(src)
    if not isinstance(data, dict):
        raise ValueError(f"{src}: not a station config")
    doc: dict[str, Any] = dict(data)
    base = src.parent

    def absolute(p: str) -> str:
        if is_builtin(p):
            return p
        return str(p if Path(p).is_absolute() else base / p)

    ports = LoopbackPorts()
    tag = f"{os.getpid()}-{ports.take()}"
    for c in doc.get("chargers", []):
        if "port" in c:
            c["host"] = "127.0.0.1"
            c["port"] = ports.take()
        c["map"] = absolute(c.get("map", "builtin:charger-generic"))
    for s in doc.get("slots", []):
        if bus == "virtual":
            s["bus"] = {"interface": "virtual", "channel": f"bench-{tag}-{s['id']}"}
        else:
            s["bus"] = {
                "interface": "slcan",
                "channel": f"socket://127.0.0.1:{ports.take()}",
                "bitrate": 250000,
            }
    robot = dict(doc.get("robot") or {})
    robot["host"] = "127.0.0.1"
    robot["port"] = ports.take()
    ports.close()
    robot["map"] = absolute(robot.get("map", "builtin:robot-plc"))
    robot["steps"] = absolute(robot.get("steps", "builtin:swap-steps"))
    doc["robot"] = robot
    station = dict(doc["station"])
    station["state_dir"] = str(Path(state_dir) if state_dir is not None else out / "state")
    station["ctl_socket"] = str(out / "ctl.sock")
    doc["station"] = station
    mqtt = dict(doc.get("mqtt") or {})
    if mqtt_host is not None:
        mqtt["host"] = mqtt_host
    if mqtt_port is not None:
        mqtt["port"] = mqtt_port
    if mqtt_protocol is not None:
        mqtt["protocol"] = mqtt_protocol
    doc["mqtt"] = mqtt
    if speed is not None:
        doc["sim"] = {**(doc.get("sim") or {}), "speed": speed}
    path = out / "station.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
