"""Config of the MQTT link and the telemetry service (embedded by the station as `mqtt:` and
`telemetry:`). Unknown keys are errors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.telemetry.topics import LEVEL_PATTERN

Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(Strict):
    """Files, or names of systemd credentials (LoadCredential=) looked up in
    $CREDENTIALS_DIRECTORY; a credential name wins over a file when both are given."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_credential: str | None = None
    cert_credential: str | None = None
    key_credential: str | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        has_cert = self.cert_file is not None or self.cert_credential is not None
        has_key = self.key_file is not None or self.key_credential is not None
        if has_cert != has_key:
            raise ValueError("a client certificate needs its key and a key needs its certificate")
        return self


class MqttConfig(Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    prefix: str = "swapstation/v1"
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    username: str | None = None
    # Prefer SWAPD_MQTT_PASSWORD or password_file; a password in the YAML is allowed for benches.
    password: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    backoff_initial_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("prefix")
    @classmethod
    def _prefix_levels(cls, v: str) -> str:
        # Plain levels only: NATS and RabbitMQ read '.', '$' and wildcards their own way.
        if not all(re.match(LEVEL_PATTERN, level) for level in v.split("/")):
            raise ValueError(
                "prefix must be plain topic levels (letters, digits, '_', '-') joined by '/'"
            )
        if len(v.split("/")) > 3:
            raise ValueError("prefix may have at most 3 levels (topics stay within 7 levels)")
        return v

    def resolve_password(self) -> str | None:
        """The environment wins, then the file, then the config value."""
        env = os.environ.get("SWAPD_MQTT_PASSWORD")
        if env is not None:
            return env
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password


class TelemetryConfig(Strict):
    # Per-field deadband: a numeric field is republished when it moved at least this much since
    # the last publish (numbers inside dict fields, such as axes_mm, use their field's value).
    deadbands: dict[str, Annotated[float, Field(ge=0)]] = {
        "grid_power_kw": 1.0,
        "soc_pct": 0.5,
        "voltage_v": 1.0,
        "current_a": 0.5,
        "power_kw": 0.5,
        "temp_max_c": 0.5,
        "temp_min_c": 0.5,
        "axes_mm": 1.0,
    }
    min_interval_s: Annotated[float, Field(ge=0, le=3600)] = 1.0
    refresh_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    outbox_path: Path = Path("/var/lib/swapd/outbox.sqlite")
    outbox_max_bytes: Annotated[int, Field(ge=16_384)] = 64 * 1024 * 1024
    # "full" survives power loss (an fsync per event); "normal" survives a process crash.
    outbox_synchronous: Literal["full", "normal"] = "full"
    replay_rate_per_s: Annotated[float, Field(gt=0)] = 2000.0
    # Commands whose expires_at lies further ahead are refused (bounds the dedupe store).
    max_command_ttl_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 86400.0
    command_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Longest power-limit lease accepted by set_power_limit.
    max_power_lease_s: Annotated[float, Field(gt=0)] = 86400.0
