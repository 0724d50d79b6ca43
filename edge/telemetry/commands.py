"""Remote commands: parse, authorise, expire, validate, dedupe, dispatch, answer.

Every payload gets exactly one result; a repeated cmd_id gets the stored first result, byte for
byte, and acts once, until its expires_at, also across a restart (the store is SQLite).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta

import orjson
from pydantic import ValidationError

from drivers.core.clock import Clock, utc_iso
from drivers.core.log import get_logger
from edge.schema import migrate
from edge.telemetry.config import TelemetryConfig
from edge.telemetry.models import (
    COMMAND_PARAMS,
    CommandEnvelope,
    CommandError,
    CommandResult,
    ErrorCode,
    ManualParams,
    Params,
    RefitOriginalParams,
    RefreshParams,
    ResetFaultParams,
    RetryStepParams,
    SetModeParams,
    SetPowerLimitParams,
    StartSwapParams,
)
from edge.telemetry.outbox import OUTBOX_SCHEMA
from edge.telemetry.target import CommandTarget, OutOfRange, Rejected

log = get_logger("commands")

MIN_RETENTION_S = 3600.0  # refusals are remembered at least this long
MAX_STORED = 100_000
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


class _Refused(Exception):  # noqa: N818 - internal control flow
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CommandStore:
    """cmd_id -> first result. A row without a result is a command interrupted mid-flight."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._db = conn
        # Its table lives in the outbox file, whose schema version covers both.
        migrate(conn, OUTBOX_SCHEMA)

    def get(self, cmd_id: str, now_epoch: float) -> tuple[bool, bytes | None]:
        """(found, result). found with result None: a restart interrupted it."""
        row = self._db.execute(
            "SELECT result FROM commands WHERE cmd_id = ? AND keep_until > ?", (cmd_id, now_epoch)
        ).fetchone()
        if row is None:
            return False, None
        return True, (bytes(row[0]) if row[0] is not None else None)

    def begin(self, cmd_id: str, keep_until: float, now_epoch: float) -> None:
        self._db.execute("DELETE FROM commands WHERE keep_until <= ?", (now_epoch,))
        self._db.execute(
            "INSERT OR REPLACE INTO commands (cmd_id, keep_until, result) VALUES (?, ?, NULL)",
            (cmd_id, keep_until),
        )
        n = self._db.execute("SELECT COUNT(*) FROM commands").fetchone()[0]
        if n > MAX_STORED:
            self._db.execute(
                "DELETE FROM commands WHERE cmd_id IN (SELECT cmd_id FROM commands"
                " ORDER BY keep_until LIMIT ?)",
                (n - MAX_STORED,),
            )

    def finish(self, cmd_id: str, result: bytes) -> None:
        self._db.execute("UPDATE commands SET result = ? WHERE cmd_id = ?", (result, cmd_id))


class CommandProcessor:
    def __init__(
        self,
        cfg: TelemetryConfig,
        target: CommandTarget,
        store: CommandStore,
        clock: Clock,
        on_refresh: Callable[[], None],
        on_executed: Callable[[str, str, CommandError | None], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._target = target
        self._store = store
        self._clock = clock
        self._on_refresh = on_refresh
        self._on_executed = on_executed
        self._allowed = frozenset(cfg.commands_allowed)
        self.handled = 0
        self.refused = 0

    def _result(self, cmd_id: str | None, error: CommandError | None) -> bytes:
        r = CommandResult(
            cmd_id=cmd_id, ok=error is None, error=error, ts=utc_iso(self._clock.now())
        )
        return orjson.dumps(r.model_dump(mode="json"))

    async def handle(self, name: str, payload: bytes) -> bytes:
        """The result payload for one command message. Never raises for bad input."""
        self.handled += 1
        now = self._clock.now()
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            self.refused += 1
            return self._result(None, CommandError(code=ErrorCode.BAD_JSON, message=str(e)[:200]))
        if not isinstance(data, dict):
            self.refused += 1
            return self._result(
                None,
                CommandError(code=ErrorCode.BAD_JSON, message="payload must be a JSON object"),
            )
        cmd_id = data.get("cmd_id")
        if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= 128:
            self.refused += 1
            return self._result(
                None,
                CommandError(
                    code=ErrorCode.INVALID_PARAMS, message="cmd_id: a string of 1..128 characters"
                ),
            )
        found, stored = self._store.get(cmd_id, now.timestamp())
        if found:
            if stored is not None:
                return stored
            # Acted on (or not) before a restart: the outcome is unknown, never act twice.
            out = self._result(
                cmd_id,
                CommandError(
                    code=ErrorCode.REJECTED,
                    message="interrupted by a restart before it completed; outcome unknown",
                ),
            )
            self._store.finish(cmd_id, out)
            return out
        keep_until = now.timestamp() + MIN_RETENTION_S
        try:
            envelope = self._check(name, payload, now)
            keep_until = max(keep_until, envelope.expires_at.timestamp())
            params = self._params(name, envelope, now)
        except _Refused as r:
            self.refused += 1
            out = self._result(cmd_id, CommandError(code=r.code, message=r.message))
            self._store.begin(cmd_id, keep_until, now.timestamp())
            self._store.finish(cmd_id, out)
            return out
        self._store.begin(cmd_id, keep_until, now.timestamp())
        error = await self._dispatch(name, cmd_id, params)
        if error is not None:
            self.refused += 1
        out = self._result(cmd_id, error)
        self._store.finish(cmd_id, out)
        if self._on_executed is not None:
            self._on_executed(name, cmd_id, error)
        return out

    def _check(self, name: str, payload: bytes, now: datetime) -> CommandEnvelope:
        if name not in COMMAND_PARAMS:
            raise _Refused(ErrorCode.UNKNOWN_COMMAND, f"unknown command {name!r}"[:200])
        if name not in self._allowed:
            raise _Refused(ErrorCode.NOT_ALLOWED, f"{name} is not allowed by config")
        if name == "reset_fault" and not self._cfg.allow_remote_reset:
            raise _Refused(ErrorCode.NOT_ALLOWED, "remote reset_fault is disabled by config")
        try:
            env = CommandEnvelope.model_validate_json(payload, strict=True)
        except ValidationError as e:
            raise _refusal(e) from None
        if env.expires_at <= now:
            raise _Refused(ErrorCode.EXPIRED, f"expired at {utc_iso(env.expires_at)}")
        if env.expires_at > now + timedelta(seconds=self._cfg.max_command_ttl_s):
            raise _Refused(
                ErrorCode.OUT_OF_RANGE,
                f"expires_at: more than {self._cfg.max_command_ttl_s:g} s ahead",
            )
        return env

    def _params(self, name: str, env: CommandEnvelope, now: datetime) -> Params:
        model = COMMAND_PARAMS[name]
        try:
            params = model.model_validate_json(orjson.dumps(env.params), strict=True)
        except ValidationError as e:
            raise _refusal(e, "params.") from None
        if isinstance(params, SetPowerLimitParams):
            if params.valid_until <= now:
                raise _Refused(ErrorCode.OUT_OF_RANGE, "params.valid_until: in the past")
            if params.valid_until > now + timedelta(seconds=self._cfg.max_power_lease_s):
                raise _Refused(
                    ErrorCode.OUT_OF_RANGE,
                    f"params.valid_until: lease longer than {self._cfg.max_power_lease_s:g} s",
                )
        return params

    async def _dispatch(self, name: str, cmd_id: str, params: Params) -> CommandError | None:
        t = self._target
        try:
            async with asyncio.timeout(self._cfg.command_timeout_s):
                match params:
                    case SetPowerLimitParams():
                        await t.set_power_limit(params)
                    case SetModeParams():
                        await t.set_mode(params)
                    case ResetFaultParams():
                        await t.reset_fault(params)
                    case RetryStepParams():
                        await t.retry_step(params)
                    case RefitOriginalParams():
                        await t.refit_original(params)
                    case ManualParams():
                        await t.manual(params)
                    case StartSwapParams():
                        await t.start_swap(params)
                    case RefreshParams():
                        self._on_refresh()
                    case _:
                        raise AssertionError(f"no dispatch for {type(params).__name__}")
        except OutOfRange as r:
            return CommandError(code=ErrorCode.OUT_OF_RANGE, message=r.reason[:500])
        except Rejected as r:
            return CommandError(code=ErrorCode.REJECTED, message=r.reason[:500])
        except TimeoutError:
            return CommandError(
                code=ErrorCode.REJECTED,
                message=f"station did not answer within {self._cfg.command_timeout_s:g} s",
            )
        except Exception as e:  # a station bug must not stop the command loop
            log.exception("command failed", command=name, cmd_id=cmd_id)
            return CommandError(code=ErrorCode.REJECTED, message=f"internal error: {e}"[:500])
        log.info("command carried out", command=name, cmd_id=cmd_id)
        return None


def _refusal(e: ValidationError, prefix: str = "") -> _Refused:
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
    return _Refused(code, msg[:500])
