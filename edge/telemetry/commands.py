"""The MQTT command route: bound, parse, rate-limit, dedupe, authorise, expire, then hand the
command to the station's command service, and answer.

Order (docs/mqtt.md): payload size (`too_large`, before any parsing) -> JSON (`bad_json`) ->
cmd_id -> per-client rate (`busy`) -> a repeat gets its stored result -> known command and
remote policy (`unknown_command`, `not_allowed`) -> envelope (`invalid_params`) -> expiry with
the clock tolerance (`expired`) -> the service (signature, params, mode rules, interlocks).
Every payload gets at most one result; a repeated cmd_id gets the stored first result, byte for
byte, and acts once, until its expires_at, also across a restart (the store is SQLite). The
store never forgets a command before its expires_at: when it is full, new commands are `busy`.
"""

from __future__ import annotations

import re
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

import orjson
from pydantic import ValidationError

from drivers.core.clock import Clock, utc_iso
from drivers.core.log import get_logger
from edge.command_types import ErrorCode, Origin, Rejected, Signature, refusal
from edge.operator.config import CommandsConfig
from edge.schema import migrate
from edge.telemetry.config import TelemetryConfig
from edge.telemetry.models import CommandEnvelope, CommandError, CommandResult
from edge.telemetry.outbox import OUTBOX_SCHEMA
from edge.telemetry.target import CommandTarget

log = get_logger("commands")

MIN_RETENTION_S = 3600.0  # refusals are remembered at least this long
MAX_CLIENTS = 4096  # rate-limit buckets kept (idle ones go first)
_CMD_ID = re.compile(rb'"cmd_id"\s*:\s*"([^"\\\x00-\x1f]{1,128})"')
_PEEK_BYTES = 4096  # where a too-large payload's cmd_id is looked for


class CommandStore:
    """cmd_id -> first result. A row without a result is a command interrupted mid-flight.
    Rows leave only once their keep_until (>= the command's expires_at) has passed."""

    def __init__(self, conn: sqlite3.Connection, max_rows: int = 100_000) -> None:
        self._db = conn
        # Its table lives in the outbox file, whose schema version covers both.
        migrate(conn, OUTBOX_SCHEMA)
        self.max_rows = max_rows
        self._count = int(self._db.execute("SELECT COUNT(*) FROM commands").fetchone()[0])
        self._purged_at = float("-inf")

    def get(self, cmd_id: str, now_epoch: float) -> tuple[bool, bytes | None]:
        """(found, result). found with result None: a restart interrupted it."""
        row = self._db.execute(
            "SELECT result FROM commands WHERE cmd_id = ? AND keep_until > ?", (cmd_id, now_epoch)
        ).fetchone()
        if row is None:
            return False, None
        return True, (bytes(row[0]) if row[0] is not None else None)

    def _purge(self, now_epoch: float) -> None:
        if now_epoch - self._purged_at < 1.0 and self._count < self.max_rows:
            return
        self._purged_at = now_epoch
        self._count -= self._db.execute(
            "DELETE FROM commands WHERE keep_until <= ?", (now_epoch,)
        ).rowcount

    def has_room(self, now_epoch: float) -> bool:
        self._purge(now_epoch)
        return self._count < self.max_rows

    def begin(self, cmd_id: str, keep_until: float, now_epoch: float) -> bool:
        """Remember a command; False (nothing stored) when the store is full."""
        if not self.has_room(now_epoch):
            return False
        cur = self._db.execute(
            "INSERT OR IGNORE INTO commands (cmd_id, keep_until, result) VALUES (?, ?, NULL)",
            (cmd_id, keep_until),
        )
        if cur.rowcount == 0:  # an expired row of the same id, not purged yet
            self._db.execute(
                "UPDATE commands SET keep_until = ?, result = NULL WHERE cmd_id = ?",
                (keep_until, cmd_id),
            )
        else:
            self._count += 1
        return True

    def finish(self, cmd_id: str, result: bytes) -> None:
        self._db.execute("UPDATE commands SET result = ? WHERE cmd_id = ?", (result, cmd_id))

    def __len__(self) -> int:
        return self._count


class ClientRates:
    """A token bucket per declared client id, on the monotonic clock; bounded in memory."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float) -> bool:
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return ok


def find_cmd_id(payload: bytes) -> str | None:
    """The cmd_id of a payload too large to parse, when it sits near the start."""
    m = _CMD_ID.search(payload, 0, _PEEK_BYTES)
    if m is None:
        return None
    try:
        return m.group(1).decode()
    except UnicodeDecodeError:
        return None


class CommandProcessor:
    def __init__(
        self,
        cfg: TelemetryConfig,
        target: CommandTarget,
        store: CommandStore,
        clock: Clock,
        on_executed: Callable[[str, str, CommandError | None], None] | None = None,
        limits: CommandsConfig | None = None,
    ) -> None:
        self._cfg = cfg
        self._limits = limits or CommandsConfig()
        self._target = target
        self._store = store
        self._store.max_rows = self._limits.dedupe_max
        self._clock = clock
        self._on_executed = on_executed
        self._rates = ClientRates(self._limits.rate_per_client_per_s, self._limits.burst_per_client)
        self.handled = 0
        self.refused = 0
        self.too_large = 0
        self.busy = 0

    @property
    def max_payload_bytes(self) -> int:
        return self._limits.max_payload_bytes

    def _result(self, cmd_id: str | None, error: CommandError | None) -> bytes:
        r = CommandResult(
            cmd_id=cmd_id, ok=error is None, error=error, ts=utc_iso(self._clock.now())
        )
        return orjson.dumps(r.model_dump(mode="json"))

    def _refused(self, name: str, origin: Origin, code: ErrorCode, message: str) -> bytes:
        self.refused += 1
        self._target.refuse(name, origin, Rejected(code, message))
        return self._result(origin.cmd_id, CommandError(code=code, message=message[:500]))

    async def handle(self, name: str, payload: bytes) -> bytes:
        """The result payload for one command message. Never raises for bad input."""
        self.handled += 1
        now = self._clock.now()
        if len(payload) > self._limits.max_payload_bytes:
            self.too_large += 1
            origin = Origin("mqtt", cmd_id=find_cmd_id(payload))
            return self._refused(
                name,
                origin,
                ErrorCode.TOO_LARGE,
                f"payload of {len(payload)} bytes; the limit is {self._limits.max_payload_bytes}",
            )
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            return self._refused(name, Origin("mqtt"), ErrorCode.BAD_JSON, str(e)[:200])
        if not isinstance(data, dict):
            return self._refused(
                name, Origin("mqtt"), ErrorCode.BAD_JSON, "payload must be a JSON object"
            )
        cmd_id = data.get("cmd_id")
        client = data.get("client_id")
        client_id = client[:64] if isinstance(client, str) and client else None
        if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= 128:
            return self._refused(
                name,
                Origin("mqtt", client_id=client_id),
                ErrorCode.INVALID_PARAMS,
                "cmd_id: a string of 1..128 characters",
            )
        origin = Origin("mqtt", client_id=client_id, cmd_id=cmd_id)
        if not self._rates.allow(client_id or "", self._clock.monotonic()):
            self.busy += 1
            return self._refused(
                name, origin, ErrorCode.BUSY, "rate limit for this client_id; retry later"
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
        raw_params = data.get("params", {})
        try:
            self._target.admit(name, raw_params if isinstance(raw_params, dict) else {}, origin)
            envelope = self._envelope(payload, now)
            keep_until = max(keep_until, envelope.expires_at.timestamp())
        except Rejected as r:
            out = self._refused(name, origin, ErrorCode(r.code), r.message)
            if self._store.begin(cmd_id, keep_until, now.timestamp()):
                self._store.finish(cmd_id, out)
            return out
        if not self._store.begin(cmd_id, keep_until, now.timestamp()):
            self.busy += 1
            return self._refused(
                name, origin, ErrorCode.BUSY, "too many commands remembered; retry later"
            )
        sig = Signature(cmd_id, str(data["expires_at"]), data.get("key_id"), data.get("sig"))
        error: CommandError | None = None
        reached = True
        try:
            await self._target.execute(name, envelope.params, origin, signature=sig)
        except Rejected as r:
            self.refused += 1
            reached = r.at_station
            error = CommandError(code=ErrorCode(r.code), message=r.message[:500])
        out = self._result(cmd_id, error)
        self._store.finish(cmd_id, out)
        if self._on_executed is not None and reached:
            # Every command that reached the station leaves a durable trace; refusals of the
            # checks before it (signature, params) are logged only.
            self._on_executed(name, cmd_id, error)
        return out

    def _envelope(self, payload: bytes, now: datetime) -> CommandEnvelope:
        try:
            env = CommandEnvelope.model_validate_json(payload, strict=True)
        except ValidationError as e:
            raise refusal(e) from None
        tolerance = timedelta(seconds=self._limits.clock_tolerance_s)
        if env.expires_at + tolerance <= now:
            raise Rejected(ErrorCode.EXPIRED, f"expired at {utc_iso(env.expires_at)}")
        if env.expires_at > now + timedelta(seconds=self._cfg.max_command_ttl_s) + tolerance:
            raise Rejected(
                ErrorCode.OUT_OF_RANGE,
                f"expires_at: more than {self._cfg.max_command_ttl_s:g} s ahead",
            )
        return env
