"""The one command service: every route (MQTT, `swapd ctl`, the simulated vehicles, the demo)
hands its commands here, so every command meets the same rules in the same order:

1. known command (`unknown_command`); 2. the remote policy for MQTT and sim (`not_allowed`);
3. the signature where the policy asks for one, or wherever one is given (`unauthorized`);
4. parameters (`invalid_params`, `out_of_range`); 5. mode rules and the station's own interlocks
(`rejected` with the reason). Each command is logged once, with its origin.

The route-specific checks before this (payload size, JSON, expiry, dedupe, rate) belong to the
route (`edge.telemetry.commands` for MQTT, `edge.operator.ctl` for the socket).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from drivers.core.clock import Clock
from drivers.core.log import get_logger
from edge.command_types import ErrorCode, Origin, Rejected, Signature, refusal
from edge.operator.config import COMMANDS, LOCAL_ONLY, CommandsConfig
from edge.operator.signatures import Verifier
from edge.telemetry.models import COMMAND_PARAMS, Params, SetPowerLimitParams

log = get_logger("commands")


class Station(Protocol):
    """The station's side: one call per validated command; raises Rejected."""

    async def carry_out(self, params: Params) -> dict[str, Any] | None: ...


def policy_name(name: str, params: Mapping[str, Any]) -> str:
    """The policy entry a command falls under (leaving manual is its own entry)."""
    if name == "manual" and params.get("enabled", True) is not True:
        return "end_manual"
    return name


class CommandService:
    def __init__(
        self,
        cfg: CommandsConfig,
        station: Station,
        *,
        clock: Clock,
        verifier: Verifier | None = None,
        timeout_s: float = 10.0,
        max_power_lease_s: float = 86400.0,
    ) -> None:
        self.cfg = cfg
        self.station = station
        self.clock = clock
        self.verifier = verifier
        self.timeout_s = timeout_s
        self.max_power_lease_s = max_power_lease_s
        self.executed = 0
        self.refused = 0

    # ---- the steps, also called one by one by the MQTT route (policy before the envelope)

    def admit(self, name: str, params: Mapping[str, Any], origin: Origin) -> None:
        """Steps 1 and 2: the command exists on this route and the policy lets it through."""
        if name not in COMMANDS or (origin.remote and name in LOCAL_ONLY):
            raise Rejected(ErrorCode.UNKNOWN_COMMAND, f"unknown command {name!r}"[:200])
        if origin.remote:
            entry = policy_name(name, params)
            if self.cfg.policy(entry) == "deny":
                raise Rejected(
                    ErrorCode.NOT_ALLOWED,
                    f"{entry} is not allowed from {origin.route} (commands.remote.{entry})",
                )

    def check_signature(
        self, name: str, params: Mapping[str, Any], origin: Origin, sig: Signature | None
    ) -> str | None:
        """Step 3: the key id that verified, or None when no signature was needed or given."""
        given = sig is not None and (sig.sig is not None or sig.key_id is not None)
        required = origin.remote and self.cfg.policy(policy_name(name, params)) == "signed"
        if not given and not required:
            return None
        if self.verifier is None or sig is None:
            raise Rejected(ErrorCode.UNAUTHORIZED, f"{name} needs a signed command (sig, key_id)")
        return self.verifier.verify(name, sig.cmd_id, sig.expires_at, params, sig.key_id, sig.sig)

    def validate(self, name: str, params: Mapping[str, Any]) -> Params:
        """Step 4."""
        model = COMMAND_PARAMS[name]
        try:
            typed = model.model_validate_json(orjson.dumps(params), strict=True)
        except ValidationError as e:
            raise refusal(e, "params.") from None
        except orjson.JSONEncodeError as e:
            raise Rejected(ErrorCode.INVALID_PARAMS, f"params: {e}") from None
        if isinstance(typed, SetPowerLimitParams):
            now = self.clock.now()
            if typed.valid_until <= now:
                raise Rejected(ErrorCode.OUT_OF_RANGE, "params.valid_until: in the past")
            if typed.valid_until > now + timedelta(seconds=self.max_power_lease_s):
                raise Rejected(
                    ErrorCode.OUT_OF_RANGE,
                    f"params.valid_until: lease longer than {self.max_power_lease_s:g} s",
                )
        return typed

    # ---- the one entry

    async def execute(
        self,
        name: str,
        params: Mapping[str, Any],
        origin: Origin,
        *,
        signature: Signature | None = None,
    ) -> dict[str, Any]:
        """Carry out one command; raises Rejected(code, message). Logged once, with origin."""
        try:
            self.admit(name, params, origin)
            key_id = self.check_signature(name, params, origin, signature)
            if key_id is not None:
                origin = _with_key(origin, key_id)
            typed = self.validate(name, params)
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await self.station.carry_out(typed)
            except Rejected as e:
                e.at_station = True
                raise
            except TimeoutError:
                late = Rejected(
                    ErrorCode.REJECTED, f"station did not answer within {self.timeout_s:g} s"
                )
                late.at_station = True
                raise late from None
        except Rejected as e:
            self.refuse(name, origin, e)
            raise
        except Exception as e:  # a station bug must not stop a command route
            log.exception("command failed", command=name, **origin.fields())
            self.refused += 1
            broken = Rejected(ErrorCode.REJECTED, f"internal error: {e}"[:500])
            broken.at_station = True
            raise broken from e
        self.executed += 1
        log.info("command carried out", command=name, ok=True, **origin.fields())
        return result or {}

    def refuse(self, name: str, origin: Origin, e: Rejected) -> None:
        """Log a refusal (also for refusals a route makes before `execute`)."""
        self.refused += 1
        log.info(
            "command refused",
            command=name[:64],
            ok=False,
            code=e.code,
            reason=e.message[:200],
            **origin.fields(),
        )


def _with_key(origin: Origin, key_id: str) -> Origin:
    return Origin(
        origin.route,
        client_id=origin.client_id,
        cmd_id=origin.cmd_id,
        uid=origin.uid,
        gid=origin.gid,
        pid=origin.pid,
        key_id=key_id,
    )
