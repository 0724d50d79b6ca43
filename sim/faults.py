"""Fault injection for simulators over MQTT: `<root>/sim/<device_id>/fault`.

Payload `{"fault": str, "clear": bool, "params": {...}}` (QoS 1, never retained: a retained
fault would be injected again by every simulator that restarts). `publish_fault` sends one;
`FaultListener` runs beside the simulators, validates what arrives and hands it to the device
registered under that id (`FaultInjectable`). Nothing is replied: outcomes are logged and
counted, bad payloads are dropped.

The simulators' fault switches take the catalogue's names; `ChargerInjector` and `RobotInjector`
give them the listener's shape (a world's pack seat has it itself). `fault_catalogue()` says which
faults each simulated device type supports, with the names read from the simulators.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiomqtt
import orjson
from pydantic import ValidationError

from drivers.core.backoff import Backoff
from drivers.core.log import get_logger
from edge.telemetry.models import SimFault
from edge.telemetry.topics import check_level
from sim.broker import BrokerAddress, parse_broker_url
from sim.devices.charger import FAULT_NAMES as CHARGER_FAULTS
from sim.devices.charger import ChargerSim
from sim.devices.pack import Fault as PackFault
from sim.devices.robot_plc import FAULT_NAMES as ROBOT_FAULTS
from sim.devices.robot_plc import RobotPlcSim

if TYPE_CHECKING:
    from edge.config import StationConfig

_log = get_logger("sim.faults")


def sim_fault_topic(root: str, device_id: str) -> str:
    # TopicError is a ValueError: '.', '$', spaces and wildcards break NATS or RabbitMQ.
    return f"{root}/sim/{check_level(device_id, 'device id')}/fault"


def sim_fault_filter(root: str) -> str:
    return f"{root}/sim/+/fault"


@runtime_checkable
class FaultInjectable(Protocol):
    """What a simulator offers the fault listener. `inject`/`clear` raise ValueError (or
    KeyError) for parameters they cannot use; the listener counts and logs that."""

    def faults(self) -> list[str]: ...

    def inject(self, fault: str, params: Mapping[str, Any]) -> None: ...

    def clear(self, fault: str) -> None: ...


class FaultOutcome(StrEnum):
    INJECTED = "injected"
    CLEARED = "cleared"
    INVALID = "invalid"  # not JSON, not the SimFault shape, or not a fault topic
    UNKNOWN_DEVICE = "unknown_device"  # no simulator registered under that id (here)
    UNKNOWN_FAULT = "unknown_fault"  # the device does not list that fault
    REJECTED = "rejected"  # the device refused the params


class FaultDispatcher:
    """Sans-I/O: (topic, payload bytes) -> the registered device. Counts every outcome."""

    def __init__(self, root: str, registry: Mapping[str, FaultInjectable]) -> None:
        self.root = root
        self.registry = registry
        self.counts: Counter[FaultOutcome] = Counter()

    def device_id(self, topic: str) -> str:
        head, tail = f"{self.root}/sim/", "/fault"
        if not (topic.startswith(head) and topic.endswith(tail)):
            raise ValueError(f"not a fault topic: {topic!r}")
        device = topic[len(head) : -len(tail)]
        if not device or "/" in device:
            raise ValueError(f"not a fault topic: {topic!r}")
        return device

    def handle(self, topic: str, payload: bytes) -> FaultOutcome:
        outcome = self._handle(topic, payload)
        self.counts[outcome] += 1
        return outcome

    def _handle(self, topic: str, payload: bytes) -> FaultOutcome:
        try:
            device_id = self.device_id(topic)
            cmd = SimFault.model_validate(orjson.loads(payload))
        except (ValueError, orjson.JSONDecodeError, ValidationError) as e:
            _log.warning("fault payload dropped", topic=topic, error=str(e).splitlines()[0])
            return FaultOutcome.INVALID
        device = self.registry.get(device_id)
        if device is None:
            # Several sim processes may share a broker: another one may own this id.
            _log.info("fault for a device not simulated here", device=device_id, fault=cmd.fault)
            return FaultOutcome.UNKNOWN_DEVICE
        if cmd.fault not in device.faults():
            _log.warning(
                "unknown fault", device=device_id, fault=cmd.fault, supported=device.faults()
            )
            return FaultOutcome.UNKNOWN_FAULT
        try:
            if cmd.clear:
                device.clear(cmd.fault)
            else:
                device.inject(cmd.fault, cmd.params)
        except (ValueError, KeyError, TypeError) as e:
            _log.warning(
                "fault rejected by the simulator", device=device_id, fault=cmd.fault, error=str(e)
            )
            return FaultOutcome.REJECTED
        outcome = FaultOutcome.CLEARED if cmd.clear else FaultOutcome.INJECTED
        _log.info(
            "fault applied", outcome=outcome, device=device_id, fault=cmd.fault, params=cmd.params
        )
        return outcome


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None


def _address(broker: BrokerAddress | str) -> BrokerAddress:
    return broker if isinstance(broker, BrokerAddress) else parse_broker_url(broker)


def mqtt_client(
    broker: BrokerAddress | str,
    credentials: MqttCredentials | None = None,
    identifier: str | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client for bench tools. MQTT 3.1.1: the embedded amqtt broker speaks no 5."""
    addr = _address(broker)
    cred = credentials or MqttCredentials()
    tls = cred.tls_context
    if addr.tls and tls is None:
        tls = ssl.create_default_context()
    return aiomqtt.Client(
        addr.host,
        addr.port,
        identifier=identifier,
        username=cred.username,
        password=cred.password,
        tls_context=tls,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )


async def publish_fault(
    broker_url: BrokerAddress | str,
    root: str,
    device_id: str,
    fault: str,
    clear: bool = False,
    params: Mapping[str, Any] | None = None,
    credentials: MqttCredentials | None = None,
) -> None:
    """Publish one fault command (QoS 1, not retained) and return once the broker has it.

    Raises pydantic.ValidationError for a bad fault name, ValueError for a bad device id,
    aiomqtt.MqttError when the broker cannot be reached.
    """
    cmd = SimFault(fault=fault, clear=clear, params=dict(params or {}))
    topic = sim_fault_topic(root, device_id)
    async with mqtt_client(broker_url, credentials) as client:
        await client.publish(topic, cmd.model_dump_json().encode(), qos=1, retain=False)


class FaultListener:
    """Subscribes to `<root>/sim/+/fault` and dispatches to the registry, reconnecting with a
    capped backoff. `subscribed` is set while the subscription stands."""

    def __init__(
        self,
        broker_url: BrokerAddress | str,
        root: str,
        registry: Mapping[str, FaultInjectable],
        credentials: MqttCredentials | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.broker = _address(broker_url)
        self.root = root
        self.dispatcher = FaultDispatcher(root, registry)
        self.credentials = credentials
        self.max_backoff_s = max_backoff_s
        self.subscribed = asyncio.Event()

    @property
    def counts(self) -> Counter[FaultOutcome]:
        return self.dispatcher.counts

    async def run(self) -> None:
        client = mqtt_client(self.broker, self.credentials)
        backoff = Backoff(0.2, self.max_backoff_s)
        while True:
            try:
                async with client:
                    await client.subscribe(sim_fault_filter(self.root), qos=1)
                    self.subscribed.set()
                    backoff.reset()
                    async for msg in client.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else b""
                        self.dispatcher.handle(msg.topic.value, payload)
            except aiomqtt.MqttError as e:
                self.subscribed.clear()
                delay = backoff.next_delay()
                log = _log.warning if backoff.failures == 1 else _log.debug
                log("fault listener lost the broker", broker=self.broker.url, error=str(e))
                await asyncio.sleep(delay)


# ---- the simulators as FaultInjectables ---------------------------------------------------------


class ChargerInjector:
    """A charger simulator's `apply_fault(name, active, value)`: its FAULT_NAMES, and the map's
    fault-bit names as `bit:<flag>`. The optional `value` param carries slow's delay or
    exception's code."""

    def __init__(self, sim: ChargerSim, bit_flags: Iterable[str] = ()) -> None:
        self.sim = sim
        self._names = [*CHARGER_FAULTS, *(f"bit:{b}" for b in bit_flags)]

    def faults(self) -> list[str]:
        return list(self._names)

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        value = params.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{fault}: value must be a number, got {value!r}")
        self.sim.apply_fault(fault, True, value)

    def clear(self, fault: str) -> None:
        self.sim.apply_fault(fault, False)


class RobotInjector:
    """The robot PLC simulator (and the vehicle on its platform): its `apply_fault`, whose
    names (`sim.devices.robot_plc.FAULT_NAMES`) are the catalogue's."""

    def __init__(self, plc: RobotPlcSim) -> None:
        self.plc = plc

    def faults(self) -> list[str]:
        return list(ROBOT_FAULTS)

    def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        self.plc.apply_fault(fault, params=params)

    def clear(self, fault: str) -> None:
        self.plc.apply_fault(fault, clear=True)


# ---- the catalogue of faults each simulated device type supports --------------------------------


@dataclass(frozen=True, slots=True)
class FaultSpec:
    name: str
    description: str
    params: tuple[str, ...] = ()  # the params it reads, `name: meaning`
    example: Mapping[str, Any] = field(default_factory=dict)  # what the view's menu sends


@dataclass(frozen=True, slots=True)
class DeviceFaults:
    device_type: str
    faults: tuple[FaultSpec, ...]
    source: str  # the simulator's list the names come from


def _described(names: Iterable[str], specs: Iterable[FaultSpec]) -> tuple[FaultSpec, ...]:
    """The simulator's names, in its order, each with its description here ("" if none)."""
    known = {s.name: s for s in specs}
    return tuple(known.get(n, FaultSpec(n, "")) for n in names)


_CHARGER = (
    FaultSpec("silent", "requests get no answer at all (station: charger offline)"),
    FaultSpec("slow", "every answer delayed", ("value: delay s, default 0.5",)),
    FaultSpec("invalid_values", "measured points read as their invalid raw value"),
    FaultSpec(
        "exception",
        "every request answered with a Modbus exception",
        ("value: exception code, default 6 (busy)",),
    ),
    FaultSpec(
        "read_exception",
        "reads answered with a Modbus exception, writes still applied",
        ("value: exception code, default 4",),
    ),
    FaultSpec("short_answers", "reads answered with one register too few"),
    FaultSpec("garbage", "answers replaced by random bytes"),
    FaultSpec("ignore_writes", "writes acknowledged, not applied (write+verify fails)"),
    FaultSpec(
        "refuse_write:<point>",
        "the next write(s) of that point (`:<raw>` only that value) answered with "
        "exception 6, then accepted again",
        ("value: how many writes, default 1",),
    ),
    FaultSpec("frozen", "reads keep serving the image of the moment of injection"),
    FaultSpec("out_of_range", "output voltage/current read an absurd value (0xFFFE)"),
    FaultSpec(
        "stuck_output",
        "the power stage no longer follows its setpoints (only the watchdog trip cuts it)",
    ),
)
_CHARGER_BITS = FaultSpec("bit:<flag>", "sets a device fault bit named in the map's fault_bits")
_PACK = (
    FaultSpec("bcl_stops", "BCL no longer sent (the charger side must stop within 1 s)"),
    FaultSpec("silent", "the BMS sends nothing at all"),
    FaultSpec("over_temperature", "BSM over-temperature flag and a hot probe"),
    FaultSpec("insulation", "BSM insulation fault flag"),
    FaultSpec("cell_over_voltage", "BSM cell over-voltage flag"),
    FaultSpec("bst_fault", "the BMS stops with a BST insulation fault"),
    FaultSpec("pause", "BSM charge permitted = 00"),
    FaultSpec("garbage", "random frames with unknown ids every 50 ms"),
    FaultSpec("wrong_dlc", "BCL sent with 3 bytes"),
    FaultSpec("broken_tp", "BCS TP.DT with a wrong sequence number"),
    FaultSpec("no_bhm", "a 2011-edition BMS (no BHM)"),
    FaultSpec("soc_unsupported", "BCS/BSD SOC 0xFF (not supported): flagged, goes on"),
    FaultSpec("hot_probe", "BSM max temperature 95 degC with no over-temperature flag"),
    FaultSpec("cell_high", "BCS max cell 4.60 V with the BSM cell state normal"),
    FaultSpec("pack_over_voltage", "BCS pack voltage 100 V above the BCP maximum"),
    FaultSpec("bad_remaining", "BCS remaining time 0xFFFF min (flagged, goes on)"),
)
_ROBOT = (
    FaultSpec("emergency_stop", "emergency-stop chain broken (clear restores it)"),
    FaultSpec("light_curtain", "light curtain broken (clear restores it)"),
    FaultSpec("door_open", "a door opens (clear closes it)"),
    FaultSpec(
        "step_fault",
        "the next run of a step fails",
        ("unit: vehicle|rack", "step: PLC step name"),
        {"unit": "vehicle", "step": "lock"},
    ),
    FaultSpec(
        "stuck_step",
        "the next run of a step never ends",
        ("unit", "step"),
        {"unit": "rack", "step": "fetch"},
    ),
    FaultSpec(
        "torque_failure",
        "lock heads out of torque window on the next lock",
        ("heads: int",),
        {"heads": 2},
    ),
    FaultSpec("vehicle_not_ready", "vehicle HV on, not immobilised (clear: ready)"),
    FaultSpec("frozen_heartbeat", "status image frozen, heartbeat too (clear: live)"),
)

DEVICE_TYPES: tuple[str, ...] = ("charger", "pack", "robot")


def fault_catalogue() -> list[DeviceFaults]:
    return [
        DeviceFaults(
            "charger",
            (*_described(CHARGER_FAULTS, _CHARGER), _CHARGER_BITS),
            "sim.devices.charger.FAULT_NAMES",
        ),
        DeviceFaults(
            "pack", _described((f.value for f in PackFault), _PACK), "sim.devices.pack.Fault"
        ),
        DeviceFaults(
            "robot", _described(ROBOT_FAULTS, _ROBOT), "sim.devices.robot_plc.FAULT_NAMES"
        ),
    ]


def supports(entry: DeviceFaults, fault: str) -> bool:
    """`fault` is listed, or matches a pattern such as `bit:<flag>`."""
    for spec in entry.faults:
        head, sep, _ = spec.name.partition("<")
        if spec.name == fault or (sep and fault.startswith(head) and len(fault) > len(head)):
            return True
    return False


def sim_devices(charger_ids: Iterable[str], slot_ids: Iterable[str]) -> dict[str, str]:
    """device_id -> device type for the simulators a config describes. Packs are named after
    their slot (`pack-<slot_id>`) so a charger and a slot may share an id."""
    devices = dict.fromkeys(charger_ids, "charger")
    devices.update({f"pack-{s}": "pack" for s in slot_ids})
    devices["robot"] = "robot"
    return devices


FaultMenu = Mapping[str, Mapping[str, Mapping[str, Any]]]  # device -> fault -> params sent


def fault_menu(charger_ids: Iterable[str], slot_ids: Iterable[str]) -> dict[str, FaultMenu]:
    """device_id -> {fault: params}: what the live view's `f` menu offers, each fault with the
    example params it sends (patterns such as `bit:<flag>` left out: they need a name only the
    register map knows)."""
    by_type = {
        d.device_type: {f.name: dict(f.example) for f in d.faults if "<" not in f.name}
        for d in fault_catalogue()
    }
    return {dev: by_type[t] for dev, t in sim_devices(charger_ids, slot_ids).items()}


@dataclass(frozen=True, slots=True)
class StationMqtt:
    """Where a config's station talks MQTT: broker address, credentials and topic root."""

    broker: BrokerAddress
    credentials: MqttCredentials
    root: str


def station_mqtt(cfg: StationConfig, broker_override: str | None = None) -> StationMqtt:
    """From the config's `mqtt` section, or `broker_override` (`mqtt://host:port`, no
    credentials) for a broker other than the station's. Raises BadBrokerUrl."""
    root = f"{cfg.mqtt.prefix}/{cfg.station.id}"
    if broker_override is not None:
        return StationMqtt(parse_broker_url(broker_override), MqttCredentials(), root)
    m = cfg.mqtt
    tls_context = None
    if m.tls is not None:
        # Files only: systemd credentials are the daemon's business, not a bench tool's.
        ca = cfg.resolve(m.tls.ca_file) if m.tls.ca_file else None
        tls_context = ssl.create_default_context(cafile=str(ca) if ca else None)
        tls_context.check_hostname = m.tls.verify_hostname
        if m.tls.cert_file and m.tls.key_file:
            tls_context.load_cert_chain(cfg.resolve(m.tls.cert_file), cfg.resolve(m.tls.key_file))
    return StationMqtt(
        BrokerAddress(m.host, m.port, tls=m.tls is not None),
        MqttCredentials(m.username, m.password, tls_context),
        root,
    )
