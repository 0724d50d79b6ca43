"""What every command route shares (a leaf module: it imports nothing of the station).

`Rejected(code, message)` is the one refusal of the house: the swap core, the station's command
service, the MQTT processor and the ctl socket all raise or answer it, with the result codes of
the MQTT contract. `Origin` says who sent a command; it is logged with every command once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_COMMAND = "unknown_command"
    NOT_ALLOWED = "not_allowed"  # the remote policy refuses this command from this route
    OUT_OF_RANGE = "out_of_range"
    EXPIRED = "expired"
    REJECTED = "rejected"  # valid, but the station cannot carry it out now (reason given)
    UNAUTHORIZED = "unauthorized"  # a signature is missing where required, or does not verify
    TOO_LARGE = "too_large"  # payload over the configured limit; dropped before parsing
    BUSY = "busy"  # rate limit or a full dedupe store; retry later


class Rejected(Exception):  # noqa: N818 - the result code is `rejected` (or `code`)
    """A command the station refuses; nothing moved. `code` is an `ErrorCode` value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.at_station = False  # set once the station itself refused (it was reached)

    @property
    def reason(self) -> str:
        return self.message


def refusal(e: ValidationError, prefix: str = "") -> Rejected:
    """A pydantic error as `invalid_params` (or `out_of_range` when only bounds failed)."""
    errors = e.errors(include_url=False)
    code = (
        ErrorCode.OUT_OF_RANGE
        if errors and all(err["type"] in _RANGE_ERRORS for err in errors)
        else ErrorCode.INVALID_PARAMS
    )
    first = errors[0] if errors else None
    where = prefix + ".".join(str(p) for p in first["loc"]) if first else prefix.rstrip(".")
    msg = f"{where}: {first['msg']}" if first else str(e)
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more)"
    return Rejected(code, msg[:500])


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent a command. `route` is mqtt, ctl or sim; mqtt and sim obey the remote policy."""

    route: str
    client_id: str | None = None  # mqtt: the client id the envelope declares
    cmd_id: str | None = None
    uid: int | None = None  # ctl: the peer's credentials (SO_PEERCRED)
    gid: int | None = None
    pid: int | None = None
    key_id: str | None = None  # mqtt: the key whose signature verified

    @property
    def remote(self) -> bool:
        return self.route != "ctl"

    def fields(self) -> dict[str, object]:
        """For the log line: only what this route knows."""
        out: dict[str, object] = {"route": self.route}
        for k in ("client_id", "cmd_id", "uid", "gid", "pid", "key_id"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


@dataclass(frozen=True, slots=True)
class Signature:
    """What a signed MQTT command carries besides its params (see `edge.operator.signatures`)."""

    cmd_id: str
    expires_at: str  # exactly as sent
    key_id: object
    sig: object


LOCAL = Origin("ctl")
SIM = Origin("sim")
