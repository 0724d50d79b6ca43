"""The station config: one pydantic model tree, loaded from YAML.

Unknown keys are errors (typos caught); cross-references are checked after the fields; every
problem reads `FILE:LINE: dotted.field.path: message`. Secrets may come from the environment
(`SWAPD_<SECTION>_<FIELD>`, e.g. SWAPD_MQTT_PASSWORD) or from a file (`password_file`).
"""

from __future__ import annotations

import os
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from drivers.can.config import CanBusConfig
from drivers.core.datafile import (
    DataFileError,
    PathKey,
    Problem,
    problem_at,
    problems_from_validation,
    read_yaml,
)
from drivers.core.resources import data_file, shelf
from drivers.modbus.config import (
    ModbusEndpoint,
    ModbusRtuEndpoint,
    ModbusTcpEndpoint,
    check_endpoint_against_map,
    check_endpoints,
    resolve_map_path,
)
from drivers.modbus.regmap import RegisterMap, charger_problems, load_register_map
from edge.operator.config import CommandsConfig
from edge.scheduler.config import GridConfig
from edge.slot.config import SafetyConfig
from edge.telemetry.config import MqttConfig, TelemetryConfig
from edge.telemetry.topics import TopicError, check_level

# Package data shelves for `builtin:` names.
ROBOT_MAPS = shelf("drivers.robot")
STEP_GRAPHS = shelf("edge.swap")

# The config format's version (top-level `version:`). Bump it when a config that used to load
# would now mean something else or fail, and say what changed: an old config is refused with
# these lines rather than half-understood.
CONFIG_VERSION = 2
CONFIG_CHANGES: dict[int, tuple[str, ...]] = {
    2: (
        "shipped data files are named builtin:NAME (chargers' map: builtin:charger-generic,"
        " robot.map: builtin:robot-plc); the registers/ folder beside the config is no longer"
        " installed, a path still names a station's own file",
        "the swap step graph is robot.steps (default builtin:swap-steps); a swap-steps.yaml"
        " beside the config is no longer read",
    ),
}

Port = Annotated[int, Field(ge=1, le=65535)]
# Ids become MQTT topic levels (telemetry/slot/<id>, sim/<device_id>/fault): no '.', which NATS
# takes for a subject separator and RabbitMQ rewrites to '/'.
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationInfo(Strict):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    name: str = ""
    state_dir: Path = Path("/var/lib/swapd")
    stop_deadline_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # The operator's Unix socket for `swapd ctl` (mode 0660, group below).
    ctl_socket: Path = Path("/run/swapd/ctl.sock")
    ctl_group: str | None = None


ChargerConfig = ModbusEndpoint


class SlotConfig(Strict):
    id: Ident
    charger: Ident
    bus: CanBusConfig


class RobotConfig(Strict):
    host: str = "127.0.0.1"
    port: Port = 502
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    # `builtin:NAME` names a file shipped in the package; anything else is a path (relative to
    # the config file). See drivers/core/resources.py.
    map: str = Field(default="builtin:robot-plc", min_length=1)
    steps: str = Field(default="builtin:swap-steps", min_length=1)


class SimConfig(Strict):
    enabled: bool = False
    speed: Annotated[float, Field(gt=0, le=1000)] = 1.0
    seed: int = 1


class StationConfig(Strict):
    version: int = CONFIG_VERSION
    station: StationInfo
    mqtt: MqttConfig = MqttConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    commands: CommandsConfig = CommandsConfig()
    grid: GridConfig
    chargers: list[ChargerConfig]
    slots: list[SlotConfig]
    robot: RobotConfig = RobotConfig()
    safety: SafetyConfig = SafetyConfig()
    sim: SimConfig = SimConfig()

    # Where the file lives: relative paths (maps) resolve against it.
    source: Path | None = Field(default=None, exclude=True)

    def resolve(self, p: Path | str) -> Path:
        p = Path(p)
        base = self.source.parent if self.source is not None else Path.cwd()
        return p if p.is_absolute() else (base / p)

    def robot_map(self) -> Traversable:
        """The robot PLC contract file (`robot.map`). Raises DataFileError for an unknown
        builtin name."""
        return data_file(self.robot.map, self.resolve("."), ROBOT_MAPS)

    def step_graph(self) -> Traversable:
        """The swap step graph file (`robot.steps`)."""
        return data_file(self.robot.steps, self.resolve("."), STEP_GRAPHS)

    def charger(self, charger_id: str) -> ModbusTcpEndpoint | ModbusRtuEndpoint:
        for c in self.chargers:
            if c.id == charger_id:
                return c
        raise KeyError(charger_id)


def _raw_list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    v = data.get(key)
    return [x if isinstance(x, dict) else {} for x in v] if isinstance(v, list) else []


def _reference_checks(data: dict[str, Any]) -> list[tuple[PathKey, str]]:
    """Checks across sections, run on the raw data so they report even beside field errors."""
    out: list[tuple[PathKey, str]] = []
    chargers, slots = _raw_list(data, "chargers"), _raw_list(data, "slots")

    def dupes(items: list[dict[str, Any]], key: str, section: str) -> None:
        seen: dict[Any, int] = {}
        for i, it in enumerate(items):
            v = it.get(key)
            if v is None or not isinstance(v, str | int):
                continue
            if v in seen:
                out.append(((section, i, key), f"duplicate {key} {v!r} (also {section}.{seen[v]})"))
            else:
                seen[v] = i

    dupes(chargers, "id", "chargers")
    for i, c in enumerate(chargers):
        cid = c.get("id")
        if isinstance(cid, str):
            try:
                check_level(cid, "charger id")
            except TopicError as e:
                out.append((("chargers", i, "id"), f"{e} (it names the charger's MQTT topics)"))
    dupes(slots, "id", "slots")
    charger_ids = {c.get("id") for c in chargers}
    for i, s in enumerate(slots):
        ref = s.get("charger")
        if isinstance(ref, str) and ref not in charger_ids:
            out.append((("slots", i, "charger"), f"no charger with id {ref!r}"))
    # GB/T 27930 is point-to-point: every slot has a bus of its own.
    seen_bus: dict[tuple[Any, Any], int] = {}
    for i, s in enumerate(slots):
        bus = s.get("bus")
        if not isinstance(bus, dict):
            continue
        key = (bus.get("interface"), bus.get("channel"))
        if key in seen_bus:
            out.append(
                (
                    ("slots", i, "bus", "channel"),
                    f"bus already used by slots.{seen_bus[key]} (one bus per slot)",
                )
            )
        else:
            seen_bus[key] = i
    # Two Modbus TCP devices at one address and unit id would answer for each other.
    seen_ep: dict[tuple[Any, Any, Any], int] = {}
    for i, c in enumerate(chargers):
        if "host" in c:
            ep = (c.get("host"), c.get("port", 502), c.get("unit_id", 1))
            if ep in seen_ep:
                out.append(
                    (
                        ("chargers", i, "port"),
                        f"same host, port and unit_id as chargers.{seen_ep[ep]}",
                    )
                )
            else:
                seen_ep[ep] = i
    return out


def _file_checks(cfg: StationConfig) -> tuple[list[tuple[PathKey, str]], list[Problem]]:
    """Problems placed in the config file, and problems of the data files it names (maps)."""
    out: list[tuple[PathKey, str]] = []
    elsewhere: list[Problem] = []
    for i, s in enumerate(cfg.slots):
        ch = s.bus.channel
        if s.bus.interface == "slcan" and not (ch.startswith(("socket://", "/dev/"))):
            out.append(
                (
                    ("slots", i, "bus", "channel"),
                    "slcan channel must be socket://host:port or a /dev/ serial device",
                )
            )
    for i, msg_field, msg in check_endpoints(list(cfg.chargers)):
        out.append((("chargers", i, msg_field), msg))
    maps: dict[str, RegisterMap | DataFileError] = {}
    for i, c in enumerate(cfg.chargers):
        try:
            path = str(resolve_map_path(c, cfg.resolve(".")))
        except DataFileError as e:
            out.append((("chargers", i, "map"), e.problems[0].message))
            continue
        if path not in maps:
            try:
                maps[path] = load_register_map(path)
            except DataFileError as e:
                maps[path] = e
        m = maps[path]
        if isinstance(m, DataFileError):
            out.append((("chargers", i, "map"), f"invalid register map {path}"))
            if not any(p in elsewhere for p in m.problems):
                elsewhere.extend(m.problems)
            continue
        for fld, msg in check_endpoint_against_map(c, m):
            out.append((("chargers", i, fld), msg))
        if m.device != "charger":  # a map that says it is a charger was checked in its file
            for _loc, msg in charger_problems(m):
                out.append((("chargers", i, "map"), f"{m.name}: {msg}"))
    # The robot map and the step graph beside the config are loaded at start: load them here
    # too, so a missing or bad file fails check-config instead of `swapd run`.
    from drivers.robot.contract import RobotContract
    from edge.swap.steps import load_step_graph

    try:
        robot_map = cfg.robot_map()
        if not robot_map.is_file():
            out.append((("robot", "map"), f"file not found: {robot_map}"))
        else:
            load_step_graph(cfg.step_graph(), RobotContract.load(robot_map))
    except DataFileError as e:
        out.append((("robot", "map"), "invalid robot map or step graph"))
        elsewhere.extend(p for p in e.problems if p not in elsewhere)
    # Command-signing keys given as files: read and parsed as `swapd run` does (a key from a
    # systemd credential exists only inside the service and is checked at start).
    from edge.operator.signatures import KeyLoadError, parse_public_key

    for i, k in enumerate(cfg.commands.keys):
        if k.file is None:
            continue
        key_path = cfg.resolve(k.file)
        try:
            parse_public_key(key_path.read_bytes(), str(key_path))
        except OSError as e:
            out.append(
                (("commands", "keys", i, "file"), f"cannot read {key_path}: {e.strerror or e}")
            )
        except KeyLoadError as e:
            out.append((("commands", "keys", i, "file"), str(e)))
    if cfg.mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            p = getattr(cfg.mqtt.tls, name)
            if p is not None and not cfg.resolve(p).is_file():
                out.append((("mqtt", "tls", name), f"file not found: {cfg.resolve(p)}"))
    return out, elsewhere


def _apply_env(data: dict[str, Any]) -> None:
    """Secrets from the environment: SWAPD_MQTT_PASSWORD and friends override the file."""
    mqtt = data.get("mqtt")
    if (
        isinstance(mqtt, dict)
        or "SWAPD_MQTT_PASSWORD" in os.environ
        or "SWAPD_MQTT_USERNAME" in os.environ
    ):
        mqtt = dict(mqtt) if isinstance(mqtt, dict) else {}
        for key in ("password", "username", "host"):
            env = os.environ.get(f"SWAPD_MQTT_{key.upper()}")
            if env is not None:
                mqtt[key] = env
        data["mqtt"] = mqtt


def _version_problems(data: dict[str, Any]) -> list[tuple[PathKey, str]]:
    """An old or newer config is refused up front, naming what changed since its version."""
    v = data.get("version", 1)
    if isinstance(v, bool) or not isinstance(v, int):
        return [(("version",), f"must be an integer (this swapd reads {CONFIG_VERSION})")]
    found = "version 1 (no version key)" if "version" not in data else f"version {v}"
    if v > CONFIG_VERSION:
        return [
            (
                ("version",),
                f"config {found} is newer than this swapd reads ({CONFIG_VERSION}):"
                " upgrade swapd or use the config kept with this version",
            )
        ]
    if v == CONFIG_VERSION:
        return []
    out: list[tuple[PathKey, str]] = [
        (
            ("version",),
            f"config {found} is older than this swapd reads ({CONFIG_VERSION}); check what"
            f" changed (below), then set version: {CONFIG_VERSION}",
        )
    ]
    for n in range(max(v, 1) + 1, CONFIG_VERSION + 1):
        out += [(("version",), f"changed in {n}: {c}") for c in CONFIG_CHANGES.get(n, ())]
    return out


def load_config(path: Path | str) -> StationConfig:
    """Load and fully validate a station config. Raises DataFileError with every problem."""
    p = Path(path)
    data, index = read_yaml(p)
    if not isinstance(data, dict):
        raise DataFileError([Problem(str(p), 1, "", "the config must be a mapping of sections")])
    version = [problem_at(p, index, loc, msg) for loc, msg in _version_problems(data)]
    if version:
        raise DataFileError(version)
    _apply_env(data)
    problems = [problem_at(p, index, loc, msg) for loc, msg in _reference_checks(data)]
    try:
        cfg = StationConfig.model_validate({**data, "source": p.absolute()})
    except ValidationError as e:
        found = problems_from_validation(e, str(p), index) + problems
        raise DataFileError(sorted(found, key=lambda x: x.line)) from None
    in_config, in_files = _file_checks(cfg)
    problems += [problem_at(p, index, loc, msg) for loc, msg in in_config]
    if problems or in_files:
        raise DataFileError(sorted(problems, key=lambda x: x.line) + in_files)
    mqtt = cfg.mqtt
    updates: dict[str, Any] = {}
    if mqtt.password_file is not None and mqtt.password is None:
        try:
            updates["password"] = cfg.resolve(mqtt.password_file).read_text().strip()
        except OSError as e:
            raise DataFileError(
                [problem_at(p, index, ("mqtt", "password_file"), f"cannot read: {e}")]
            ) from None
    if mqtt.tls is not None:
        tls = {
            k: cfg.resolve(v)
            for k in ("ca_file", "cert_file", "key_file")
            if (v := getattr(mqtt.tls, k)) is not None
        }
        updates["tls"] = mqtt.tls.model_copy(update=tls)
    if updates:
        cfg = cfg.model_copy(update={"mqtt": mqtt.model_copy(update=updates)})
    # State files live under station.state_dir unless the config names a path of its own.
    state_dir = cfg.resolve(cfg.station.state_dir)
    tel = cfg.telemetry
    if "outbox_path" not in tel.model_fields_set:
        tel = tel.model_copy(update={"outbox_path": state_dir / "outbox.sqlite"})
    else:
        tel = tel.model_copy(update={"outbox_path": cfg.resolve(tel.outbox_path)})
    station = cfg.station.model_copy(
        update={"state_dir": state_dir, "ctl_socket": cfg.resolve(cfg.station.ctl_socket)}
    )
    return cfg.model_copy(update={"telemetry": tel, "station": station})
