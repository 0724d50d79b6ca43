"""The command names are listed once (edge.operator.config.COMMANDS); the MQTT contract's
parameter models and the remote policy defaults must name exactly those commands."""

from __future__ import annotations

from edge.operator.config import COMMANDS, LOCAL_ONLY, REMOTE_DEFAULTS
from edge.telemetry.models import COMMAND_PARAMS, MQTT_COMMANDS


def test_every_command_has_its_params_model_and_no_other() -> None:
    assert len(set(COMMANDS)) == len(COMMANDS)
    assert set(COMMAND_PARAMS) == set(COMMANDS)


def test_remote_policies_cover_the_remote_commands() -> None:
    remote = set(COMMANDS) - LOCAL_ONLY
    assert set(MQTT_COMMANDS) == remote
    assert set(REMOTE_DEFAULTS) == remote | {"end_manual"}
