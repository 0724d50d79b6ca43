"""The AsyncAPI 3.0 document of the MQTT interface, generated from the payload models
(`swapd asyncapi`). docs/asyncapi.yaml is a committed copy, tested equal to this output."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edge.telemetry.models import (
    COMMAND_MESSAGES,
    EVENT_MESSAGES,
    CommandResult,
    RobotTelemetryMessage,
    SimFault,
    SlotTelemetryMessage,
    StationTelemetryMessage,
    StatusPayload,
)
from edge.telemetry.topics import LEVEL_PATTERN, event_levels

CONTRACT_VERSION = "3.0.0"
ROOT = "swapstation/v1/{station_id}"
REF = "#/components/schemas/{model}"


def _param(description: str) -> dict[str, Any]:
    return {"description": description}


LEVEL_RULE = f"A plain topic level matching `{LEVEL_PATTERN}`."
PARAMS = {
    "station_id": _param(
        f"The station id (config `station.id`); the prefix is configurable. {LEVEL_RULE}"
    ),
    "slot_id": _param(f"A rack slot id (config `slots[].id`). {LEVEL_RULE}"),
    "device_id": _param(
        f"A simulated device id: a charger id, `pack-<slot_id>` or `robot`. {LEVEL_RULE}"
    ),
}


def _ident(s: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in s.replace(".", "_").split("_"))


def build() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    models: list[type[BaseModel]] = []

    def add(
        cid: str,
        address: str,
        model: type[BaseModel],
        action: str,
        qos: int,
        retain: bool,
        summary: str,
        description: str = "",
    ) -> None:
        models.append(model)
        params = {k: v for k, v in PARAMS.items() if "{" + k + "}" in address}
        messages[cid] = {
            "name": cid,
            "title": model.__name__,
            "summary": summary,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=model.__name__)},
        }
        channel: dict[str, Any] = {
            "address": address,
            "messages": {cid: {"$ref": f"#/components/messages/{cid}"}},
            "parameters": params,
        }
        if description:
            channel["description"] = description
        channels[cid] = channel
        operations[f"{action}{cid[:1].upper()}{cid[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": summary,
            "bindings": {"mqtt": {"qos": qos, "retain": retain}},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{cid}"}],
        }

    add(
        "status",
        f"{ROOT}/status",
        StatusPayload,
        "send",
        1,
        True,
        "Online state: birth on every connect, will and orderly stop say offline.",
    )
    add(
        "telemetryStation",
        f"{ROOT}/telemetry/station",
        StationTelemetryMessage,
        "send",
        0,
        False,
        "Station state on change (deadband), at most every min_interval_s, all every refresh_s. "
        "With `grid.policy: predictive` it carries `grid_plan`, the plan's grid power for the "
        "next hours (absent or null with other policies; consumers must ignore unknown fields).",
    )
    add(
        "telemetrySlot",
        f"{ROOT}/telemetry/slot/{{slot_id}}",
        SlotTelemetryMessage,
        "send",
        0,
        False,
        "One rack slot: pack, SOC, voltage, current, temperatures, session, charger.",
    )
    add(
        "telemetryRobot",
        f"{ROOT}/telemetry/robot",
        RobotTelemetryMessage,
        "send",
        0,
        False,
        "Swap robot: sequence state, step, axes, interlock inputs.",
    )
    for etype, model in EVENT_MESSAGES.items():
        add(
            "event" + _ident(etype),
            f"{ROOT}/event/{event_levels(etype)}",
            model,
            "send",
            1,
            False,
            f"Event {etype}: stored and forwarded; msg_id <boot_id>:<seq> is gap-free per boot.",
        )
    for name, cmd_model in COMMAND_MESSAGES.items():
        add(
            "cmd" + _ident(name),
            f"{ROOT}/cmd/{name}",
            cmd_model,
            "receive",
            1,
            False,
            f"Command {name}; answered once on cmd/{name}/result, repeats get the same bytes.",
        )
        add(
            "cmd" + _ident(name) + "Result",
            f"{ROOT}/cmd/{name}/result",
            CommandResult,
            "send",
            1,
            False,
            f"Result of {name}.",
        )
    add(
        "simFault",
        f"{ROOT}/sim/{{device_id}}/fault",
        SimFault,
        "receive",
        1,
        False,
        "Fault injection into a running simulator (`swapd sim fault`).",
        "Received by simulators, not by the station daemon.",
    )
    _, top = models_json_schema(
        [(m, "validation") for m in dict.fromkeys(models)], ref_template=REF
    )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "swapd battery-swap station MQTT interface",
            "version": CONTRACT_VERSION,
            "description": (
                "Telemetry, events, commands and status of one swap station. Payloads are JSON "
                "(UTF-8, < 128 KB); units are in field names; ts is RFC 3339 UTC. Topics live "
                "under <prefix>/<station_id> with prefix `swapstation/v1` by default. Every topic "
                f"level is plain (`{LEVEL_PATTERN}`: no `.`, `$`, spaces or wildcards), so the "
                "contract works on any MQTT 3.1.1/5 broker (tested: Mosquitto, NATS, RabbitMQ). "
                "An event of type `<room>.<name>` is published on `event/<room>/<name>`: "
                "subscribe to `event/#` for every event, `event/<room>/#` to follow one room. "
                "Brokers keep order per topic only: order events across types by the seq in "
                "msg_id (gap-free per boot)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": top.get("$defs", {})},
    }


def render_yaml() -> str:
    import yaml

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return str(yaml.dump(build(), Dumper=NoAliases, sort_keys=False, allow_unicode=True, width=100))


def render_json() -> str:
    import json

    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
