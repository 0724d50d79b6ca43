"""Topic names of the contract: `<prefix>/<station_id>/...` (at most 7 levels)."""

from __future__ import annotations

from dataclasses import dataclass

ROOT_TEMPLATE = "{prefix}/{station_id}"


class TopicError(ValueError):
    pass


def check_level(value: str, what: str) -> str:
    if not value or any(c in value for c in "/#+\x00"):
        raise TopicError(f"{what} {value!r} is not a single MQTT topic level")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    root: str

    @classmethod
    def for_station(cls, prefix: str, station_id: str) -> Topics:
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
        return f"{self.root}/event/{check_level(event_type, 'event type')}"

    @property
    def cmd_filter(self) -> str:
        # `+` (not `#`): our own `cmd/<name>/result` publishes must not come back to us.
        return f"{self.root}/cmd/+"

    def cmd_result(self, name: str) -> str:
        return f"{self.root}/cmd/{name}/result"

    def sim_fault(self, device_id: str) -> str:
        return f"{self.root}/sim/{check_level(device_id, 'device id')}/fault"

    def command_name(self, topic: str) -> str:
        """`<root>/cmd/<name>` -> name; TopicError for anything else."""
        head = f"{self.root}/cmd/"
        if not topic.startswith(head) or "/" in topic[len(head) :] or topic == head:
            raise TopicError(f"not a command topic: {topic!r}")
        return topic[len(head) :]
