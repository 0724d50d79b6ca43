"""Topic levels of the contract are plain on every broker: no '.', '$', spaces or wildcards."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.telemetry.config import MqttConfig
from edge.telemetry.models import EVENT_DETAILS
from edge.telemetry.topics import TopicError, Topics, check_level, event_levels
from sim.faults import sim_fault_topic

BAD_LEVELS = ["a.b", "a+b", "a#", "a b", "$SYS", "a/b", "", "x" * 129, "é"]


@pytest.mark.parametrize("level", BAD_LEVELS)
def test_a_level_with_a_character_some_broker_reads_is_refused(level: str) -> None:
    with pytest.raises(TopicError):
        check_level(level, "slot id")
    with pytest.raises(TopicError):
        Topics.for_station("swapstation/v1", level)
    with pytest.raises(ValueError):
        sim_fault_topic("swapstation/v1/st1", level)


def test_events_go_to_room_and_name_levels() -> None:
    t = Topics.for_station("swapstation/v1", "st-01")
    assert t.event("swap.started") == "swapstation/v1/st-01/event/swap/started"
    assert t.event("swap.pack_mismatch") == "swapstation/v1/st-01/event/swap/pack_mismatch"
    for etype in EVENT_DETAILS:
        topic = t.event(etype)
        assert "." not in topic and topic.count("/") == 5, topic
    for bad in ("swap", "swap.a.b", "swap.st arted", "swap.$x"):
        with pytest.raises(TopicError):
            event_levels(bad)


def test_every_contract_topic_is_plain_levels() -> None:
    t = Topics.for_station("swapstation/v1", "st-01")
    topics = [t.status, t.telemetry_station, t.telemetry_robot, t.telemetry_slot("s01")]
    topics += [t.sim_fault("pack-s01"), t.cmd_result("set_mode")]
    for topic in topics:
        for level in topic.split("/"):
            check_level(level, "level")


@pytest.mark.parametrize("prefix", ["swap.station/v1", "a/$b", "a/+/b", "a /b", "/a", "a//b"])
def test_prefix_must_be_plain_levels(prefix: str) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(prefix=prefix)
