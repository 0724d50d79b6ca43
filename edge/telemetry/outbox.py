"""Store-and-forward for events: written to SQLite (WAL) before they are published, deleted only
after the broker's PUBACK, replayed in order after a reconnect.

`msg_id` is `<boot_id>:<seq>`, seq gap-free per boot; stored events keep their ids across
restarts. Disk use is capped: when stored events reach `max_bytes`, the oldest unprotected
(non-alarm) events go first and an `outbox.overflow` event names exactly the dropped seq ranges.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from drivers.core.log import get_logger
from edge.schema import Schema, SchemaError, migrate, sql
from edge.telemetry.models import (
    PROTECTED_EVENT_TYPES,
    DroppedRange,
    EventType,
    OutboxOverflow,
)

log = get_logger("outbox")

ROW_OVERHEAD_BYTES = 64  # rowid, index entry and record header, roughly
LOW_WATER = 0.9  # on overflow, drop down to this share of the cap (one overflow event, not many)
MAX_RANGES_PER_EVENT = 500  # keeps an overflow payload far below 128 KB

# The outbox file holds the events and the command dedupe store (edge/telemetry/commands.py).
# Append a migration for every format change (edge/schema.py); never edit a released one.
OUTBOX_SCHEMA = Schema(
    "telemetry outbox",
    (
        sql(
            """CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                msg_id TEXT NOT NULL,
                type TEXT NOT NULL,
                ts TEXT NOT NULL,
                details BLOB NOT NULL,
                protected INTEGER NOT NULL,
                size INTEGER NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS events_unprotected ON events (protected, id)",
            """CREATE TABLE IF NOT EXISTS commands (
                cmd_id TEXT PRIMARY KEY,
                keep_until REAL NOT NULL,
                result BLOB
            )""",
            "CREATE INDEX IF NOT EXISTS commands_keep ON commands (keep_until)",
        ),
    ),
)


class OutboxError(RuntimeError):
    pass


class EventTooLarge(OutboxError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    msg_id: str
    type: str
    ts: str
    details: bytes

    def wire(self, replayed: bool) -> bytes:
        return orjson.dumps(
            {
                "msg_id": self.msg_id,
                "type": self.type,
                "ts": self.ts,
                "replayed": replayed,
                "details": orjson.Fragment(self.details),
            }
        )


def new_boot_id() -> str:
    return secrets.token_hex(6)


def open_db(path: Path, synchronous: Literal["full", "normal"]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit: every statement outside an explicit BEGIN is its own durable transaction.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA journal_size_limit=1048576")
    conn.execute("PRAGMA wal_autocheckpoint=256")
    return conn


class Outbox:
    """Owns the events table. Everything here is synchronous and local: never waits on MQTT."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        max_bytes: int,
        boot_id: str | None = None,
    ) -> None:
        self._db = conn
        try:
            self.found_version = migrate(conn, OUTBOX_SCHEMA)
        except SchemaError as e:
            raise OutboxError(str(e)) from e
        self.max_bytes = max_bytes
        self.boot_id = boot_id or new_boot_id()
        self._seq = 0
        row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM events").fetchone()
        self.stored_bytes: int = row[0]
        self.dropped_total = 0
        self.overflows = 0
        # The sender sets this to the highest id it has handed to the broker and not yet seen
        # acknowledged-and-deleted: those rows are never dropped (they may already be delivered).
        self.inflight_upto = 0

    @property
    def seq(self) -> int:
        """The last seq given out this boot."""
        return self._seq

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def append(self, event_type: str, ts: str, details: bytes) -> str:
        """Store one event durably and return its msg_id."""
        size = len(details) + len(event_type) + len(ts) + 32 + ROW_OVERHEAD_BYTES
        if size > self.max_bytes // 4:
            raise EventTooLarge(f"event {event_type} of {size} bytes exceeds a quarter of the cap")
        if self.stored_bytes + size > self.max_bytes:
            try:
                self._make_room(size, ts)
            except sqlite3.Error as e:
                raise OutboxError(f"cannot make room in the outbox: {e}") from e
        return self._insert(event_type, ts, details, size)

    def _insert(self, event_type: str, ts: str, details: bytes, size: int) -> str:
        self._seq += 1
        msg_id = f"{self.boot_id}:{self._seq}"
        try:
            self._db.execute(
                "INSERT INTO events (msg_id, type, ts, details, protected, size)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (msg_id, event_type, ts, details, event_type in PROTECTED_EVENT_TYPES, size),
            )
        except sqlite3.Error as e:
            self._seq -= 1  # keep seq gap-free: this id was never stored
            raise OutboxError(f"cannot store event {event_type}: {e}") from e
        self.stored_bytes += size
        return msg_id

    def _make_room(self, incoming: int, ts: str) -> None:
        reserve = 4096  # room for the overflow event itself
        target = int(self.max_bytes * LOW_WATER) - incoming - reserve
        dropped: list[tuple[int, str, int]] = []  # (id, boot_id, seq)
        for protected in (0, 1):  # protected events go only when nothing else is left
            while self.stored_bytes > target:
                rows = self._db.execute(
                    "SELECT id, msg_id, size FROM events WHERE protected = ? AND id > ?"
                    " ORDER BY id LIMIT 500",
                    (protected, self.inflight_upto),
                ).fetchall()
                if not rows:
                    break
                freed = 0
                last_id = rows[0][0]
                for rid, msg_id, size in rows:
                    boot, _, seq = msg_id.rpartition(":")
                    dropped.append((rid, boot, int(seq)))
                    freed += size
                    last_id = rid
                    if self.stored_bytes - freed <= target:
                        break
                self._db.execute(
                    "DELETE FROM events WHERE protected = ? AND id > ? AND id <= ?",
                    (protected, self.inflight_upto, last_id),
                )
                self.stored_bytes -= freed
        if not dropped:
            raise OutboxError("outbox full of in-flight events; cannot make room")
        self.dropped_total += len(dropped)
        self.overflows += 1
        dropped.sort()
        ranges = _ranges([(b, q) for _, b, q in dropped])
        log.warning(
            "outbox cap reached: events dropped",
            max_bytes=self.max_bytes,
            dropped=len(dropped),
            ranges=len(ranges),
        )
        for i in range(0, len(ranges), MAX_RANGES_PER_EVENT):
            chunk = ranges[i : i + MAX_RANGES_PER_EVENT]
            count = sum(r.last_seq - r.first_seq + 1 for r in chunk)
            details = OutboxOverflow(dropped_count=count, ranges=chunk)
            body = orjson.dumps(details.model_dump(mode="json"))
            size = len(body) + len(EventType.OUTBOX_OVERFLOW) + len(ts) + 32 + ROW_OVERHEAD_BYTES
            self._insert(EventType.OUTBOX_OVERFLOW, ts, body, size)

    def pending(self, after_id: int, limit: int = 200) -> list[StoredEvent]:
        try:
            rows = self._db.execute(
                "SELECT id, msg_id, type, ts, details FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        except sqlite3.Error as e:
            raise OutboxError(f"cannot read the outbox: {e}") from e
        return [StoredEvent(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def last_id(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def delete_upto(self, event_id: int) -> None:
        """Forget every event up to `event_id`: the broker acknowledged them (in order)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                freed = self._db.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM events WHERE id <= ?", (event_id,)
                ).fetchone()[0]
                self._db.execute("DELETE FROM events WHERE id <= ?", (event_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise OutboxError(f"cannot delete delivered events: {e}") from e
        self.stored_bytes -= int(freed)


def _ranges(dropped: list[tuple[str, int]]) -> list[DroppedRange]:
    """Maximal runs of consecutive seqs within a boot (input in storage order)."""
    runs: list[list[str | int]] = []
    for boot, seq in dropped:
        if runs and runs[-1][0] == boot and runs[-1][2] == seq - 1:
            runs[-1][2] = seq
        else:
            runs.append([boot, seq, seq])
    return [DroppedRange(boot_id=str(b), first_seq=int(f), last_seq=int(t)) for b, f, t in runs]
