"""`commands:` in the station config: who may do what from where, and how much input is taken.

A leaf module (pydantic only): the telemetry room reads its input bounds, the command service
its policy and keys. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Policy = Literal["allow", "deny", "signed"]

# Every command the service knows. `end_manual` is the policy name of `manual` with
# `enabled: false` (leaving manual un-halts both robot units).
COMMANDS = (
    "status",
    "start_swap",
    "reset_fault",
    "retry_step",
    "refit_original",
    "manual",
    "inventory_set",
    "set_power_limit",
    "set_mode",
    "refresh",
    "reset_slot",
    "disable_slot",
    "enable_slot",
)
# Only the local operator: reading the whole sequence state has no MQTT result body.
LOCAL_ONLY = frozenset({"status"})

# Safe defaults: recovery after a fault (robot motion, energised outputs) and taking slots in or
# out of service are for someone at the station unless the config says otherwise.
REMOTE_DEFAULTS: dict[str, Policy] = {
    "start_swap": "allow",  # the business flow; every interlock still runs
    "set_power_limit": "allow",
    "set_mode": "allow",
    "refresh": "allow",
    "manual": "allow",  # entering manual halts both units
    "end_manual": "deny",
    "reset_fault": "deny",
    "retry_step": "deny",
    "refit_original": "deny",
    "reset_slot": "deny",
    "inventory_set": "deny",
    "disable_slot": "deny",
    "enable_slot": "deny",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublicKey(Strict):
    """An Ed25519 public key (PEM or raw 32 bytes in base64), from a file or from a systemd
    credential (`LoadCredential=`, looked up in $CREDENTIALS_DIRECTORY)."""

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    file: Path | None = None
    credential: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PublicKey:
        if (self.file is None) == (self.credential is None):
            raise ValueError("give exactly one of file or credential")
        return self


class CommandsConfig(Strict):
    # Per command: allow, deny, or signed (allowed with a valid signature only). Missing
    # commands take REMOTE_DEFAULTS. Applies to MQTT and to the simulated vehicles' route.
    remote: dict[str, Policy] = {}
    # Up to two keys at once, so a backend can rotate without a gap.
    keys: Annotated[list[PublicKey], Field(max_length=2)] = []
    # Inbound MQTT payloads above this are dropped before parsing (answered `too_large`).
    max_payload_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 64 * 1024
    # Inbound MQTT messages waiting for the command loop; beyond this they are dropped.
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 256
    # Per declared client_id (token bucket): beyond it, `busy`.
    rate_per_client_per_s: Annotated[float, Field(gt=0, le=10_000)] = 5.0
    burst_per_client: Annotated[int, Field(ge=1, le=10_000)] = 20
    # Remembered commands (dedupe): never evicted before their expires_at; when full, `busy`.
    dedupe_max: Annotated[int, Field(ge=10, le=10_000_000)] = 100_000
    # How far the wall clock may be off when judging expires_at (seconds).
    clock_tolerance_s: Annotated[float, Field(ge=0, le=600)] = 5.0

    @field_validator("remote")
    @classmethod
    def _known(cls, v: dict[str, Policy]) -> dict[str, Policy]:
        unknown = sorted(set(v) - set(REMOTE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown commands {unknown}; known: {', '.join(REMOTE_DEFAULTS)}")
        return v

    @model_validator(mode="after")
    def _keys(self) -> CommandsConfig:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("keys: ids must differ")
        if "signed" in self.remote.values() and not self.keys:
            raise ValueError("remote: a command needs a signature but no keys are configured")
        return self

    def policy(self, name: str) -> Policy:
        return self.remote.get(name, REMOTE_DEFAULTS.get(name, "deny"))
