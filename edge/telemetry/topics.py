"""Topic names of the contract: `<prefix>/<station_id>/...` (at most 7 levels).

Every level we put in a topic is plain: letters, digits, `_` and `-` only. Brokers other than
Mosquitto read more into a level than MQTT does: NATS maps MQTT levels onto NATS subjects and
drops a client that publishes a `.` (its subject separator), RabbitMQ rewrites `.` to `/`,
and `$` starts the brokers' own topics. Spaces, `+` and `#` are MQTT's own trouble.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT_TEMPLATE = "{prefix}/{station_id}"

# One contract level: safe on every broker we test (Mosquitto, NATS, RabbitMQ).
LEVEL_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_LEVEL = re.compile(LEVEL_PATTERN)


class TopicError(ValueError):
    pass


def check_level(value: str, what: str) -> str:
    if not _LEVEL.match(value):
        raise TopicError(
            f"{what} {value!r} is not a plain MQTT topic level "
            "(1-128 letters, digits, '_' or '-'; no '.', '/', '+', '#', '$' or spaces)"
        )
    return value


def event_levels(event_type: str) -> str:
    """`swap.started` -> `swap/started`: the room is a level of its own, so `event/swap/#`
    follows a room and no level carries a `.`."""
    parts = event_type.split(".")
    if len(parts) != 2:
        raise TopicError(f"event type {event_type!r} is not <room>.<name>")
    return "/".join(check_level(p, "event type part") for p in parts)


@dataclass(frozen=True, slots=True)
class Topics:
    root: str

    @classmethod
    def for_station(cls, prefix: str, station_id: str) -> Topics:
        for level in prefix.split("/"):
            check_level(level, "prefix level")
        return cls(f"{prefix}/{check_level(station_id, 'station id')}")

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def telemetry_station(self) -> str:
        return f"{self.root}/telemetry/station"

    def telemetry_slot(self, slot_id: str) -> str:
        return f"{self.root}/telemetry/slot/{check_level(slot_id, 'slot id')}"

    @property
    def telemetry_robot(self) -> str:
        return f"{self.root}/telemetry/robot"

    def event(self, event_type: str) -> str:
        return f"{self.root}/event/{event_levels(event_type)}"

    @property
    def cmd_filter(self) -> str:
        # `+` (not `#`): our own `cmd/<name>/result` publishes must not come back to us.
        return f"{self.root}/cmd/+"

    def cmd_result(self, name: str) -> str:
        # Not checked: the name came in on a topic this broker accepted.
        return f"{self.root}/cmd/{name}/result"

    def sim_fault(self, device_id: str) -> str:
        return f"{self.root}/sim/{check_level(device_id, 'device id')}/fault"

    def command_name(self, topic: str) -> str:
        """`<root>/cmd/<name>` -> name; TopicError for anything else."""
        head = f"{self.root}/cmd/"
        if not topic.startswith(head) or "/" in topic[len(head) :] or topic == head:
            raise TopicError(f"not a command topic: {topic!r}")
        return topic[len(head) :]
