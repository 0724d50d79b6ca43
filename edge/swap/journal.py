"""The swap journal: an append-only log of records plus the sequence's latest snapshot.

Its own SQLite file, WAL, `synchronous=FULL` on every connection: a commit returns only once
it is on disk. One commit holds the records of one core step and the snapshot after it, so a
restart finds either all of a transition or none of it. The sequence writes an intent before it
commands a motion, so a crash between the two is recovered by the PLC's sequence counter.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from edge.schema import Schema, SchemaError, migrate, sql


class JournalError(RuntimeError):
    pass


# Append a migration for every format change (edge/schema.py); never edit a released one.
JOURNAL_SCHEMA = Schema(
    "swap journal",
    (
        sql(
            "CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, ts TEXT NOT NULL,"
            " kind TEXT NOT NULL, data TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
)


class RecordKind(StrEnum):
    """What a journal record says happened (its `kind` column)."""

    HELD = "held"
    INVENTORY_CORRECTED = "inventory_corrected"
    INVENTORY_INCONSISTENT = "inventory_inconsistent"
    LATCHED = "latched"
    OUTPUT_OFF_CONFIRMED = "output_off_confirmed"
    PACK_DEPARTED = "pack_departed"
    PACK_DISCOVERED = "pack_discovered"
    PACK_IDENTIFIED = "pack_identified"
    PACK_RELABELLED = "pack_relabelled"
    PLC_RESTART_ACKNOWLEDGED = "plc_restart_acknowledged"
    PLC_RESTARTED = "plc_restarted"
    RECOVERY = "recovery"
    RESTARTED = "restarted"
    STEP_DONE = "step_done"
    STEP_FAILED = "step_failed"
    STEP_INTENT = "step_intent"
    SWAP_COMPLETED = "swap_completed"
    SWAP_FAILED = "swap_failed"
    SWAP_STARTED = "swap_started"
    UNLATCHED = "unlatched"


@dataclass(frozen=True, slots=True)
class JournalRecord:
    kind: str
    data: dict[str, Any]


class Journal:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # used from one worker thread at a time (the coordinator commits off the loop)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # per connection: fsync on every commit
            self._db.execute("PRAGMA synchronous=FULL")
            self.found_version = migrate(self._db, JOURNAL_SCHEMA, str(self.path))
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}") from e
        except SchemaError as e:
            self._db.close()
            raise JournalError(str(e)) from e
        self.commits = 0
        self.keep_records = 5000  # pruned to this every `prune_every` commits
        self.prune_every = 500

    def synchronous(self) -> int:
        return int(self._db.execute("PRAGMA synchronous").fetchone()[0])

    def commit(
        self, ts: str, records: Sequence[JournalRecord], snapshot: dict[str, Any] | None
    ) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO records (ts, kind, data) VALUES (?, ?, ?)",
                [(ts, r.kind, orjson.dumps(r.data).decode()) for r in records],
            )
            if snapshot is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO state (key, value) VALUES ('core', ?)",
                    (orjson.dumps(snapshot).decode(),),
                )
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise JournalError(f"{self.path}: {e}") from e
        self.commits += 1
        if self.commits % self.prune_every == 0:
            self.prune(self.keep_records)

    def snapshot(self) -> dict[str, Any] | None:
        try:
            row = self._db.execute("SELECT value FROM state WHERE key = 'core'").fetchone()
            if row is None:
                return None
            data = orjson.loads(row[0])
        except (sqlite3.Error, orjson.JSONDecodeError) as e:
            raise JournalError(f"{self.path}: snapshot unreadable: {e}") from e
        if not isinstance(data, dict):
            raise JournalError(f"{self.path}: snapshot is not an object")
        return data

    def check(self) -> list[str]:
        """Problems found (empty: the file is sound): SQLite's integrity check, every record's
        and the snapshot's JSON."""
        problems: list[str] = []
        try:
            for (line,) in self._db.execute("PRAGMA integrity_check").fetchall():
                if line != "ok":
                    problems.append(f"integrity: {line}")
            for rid, data in self._db.execute("SELECT id, data FROM records").fetchall():
                try:
                    orjson.loads(data)
                except orjson.JSONDecodeError:
                    problems.append(f"record {rid}: not JSON")
            self.snapshot()
        except (sqlite3.Error, JournalError) as e:
            problems.append(str(e))
        return problems

    def prune(self, keep: int) -> int:
        """Drop all but the newest `keep` records (the snapshot holds the state; records are
        the recent history), so the file stays bounded. Returns how many went."""
        try:
            cur = self._db.execute(
                "DELETE FROM records WHERE id <= (SELECT MAX(id) FROM records) - ?", (keep,)
            )
        except sqlite3.Error as e:
            raise JournalError(f"{self.path}: {e}") from e
        return int(cur.rowcount or 0)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def records(self, kind: str | None = None, limit: int = 10_000) -> list[JournalRecord]:
        if kind is None:
            rows = self._db.execute(
                "SELECT kind, data FROM records ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT kind, data FROM records WHERE kind = ? ORDER BY id LIMIT ?", (kind, limit)
            ).fetchall()
        return [JournalRecord(k, orjson.loads(d)) for k, d in rows]

    def close(self) -> None:
        self._db.close()
