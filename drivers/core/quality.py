"""The quality of a value, one definition from the register to the MQTT payload."""

from __future__ import annotations

from enum import StrEnum


class Quality(StrEnum):
    GOOD = "good"  # read in the last due read and valid
    STALE = "stale"  # last known value: the source is late or the read failed
    INVALID = "invalid"  # read, but the device marks it as no value (invalid raw, NaN, range)
    BAD = "bad"  # the source is offline
