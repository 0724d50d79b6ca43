"""Schema versions of the state files: a new file is created at the current version, missing
migrations run in order in one transaction, a failed one leaves the file as it was, and a file
from a newer swapd is refused with a message that says what to do."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.schema import Migration, Schema, SchemaError, file_version, migrate, sql
from edge.swap.journal import JOURNAL_SCHEMA, Journal, JournalError
from edge.telemetry.commands import CommandStore
from edge.telemetry.outbox import OUTBOX_SCHEMA, Outbox, OutboxError, open_db


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_new_files_are_created_at_the_current_version(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.sqlite")
    assert j.found_version == 0 and file_version(j._db) == JOURNAL_SCHEMA.version >= 1
    j.close()
    db = open_db(tmp_path / "outbox.sqlite", "full")
    box = Outbox(db, 1 << 20)
    CommandStore(db)  # same file, same schema: nothing left to do
    assert box.found_version == 0 and file_version(db) == OUTBOX_SCHEMA.version >= 1
    db.close()


def test_migrations_run_in_order_from_the_version_found(tmp_path: Path) -> None:
    ran: list[int] = []

    def step(n: int) -> Migration:
        def run(conn: sqlite3.Connection) -> None:
            ran.append(n)
            conn.execute(f"CREATE TABLE t{n} (x)")

        return run

    schema = Schema("test file", (step(1), step(2), step(3)))
    conn = connect(tmp_path / "f.sqlite")
    conn.execute("CREATE TABLE t1 (x)")
    conn.execute("PRAGMA user_version = 1")
    assert migrate(conn, schema) == 1
    assert ran == [2, 3] and file_version(conn) == 3
    assert migrate(conn, schema) == 3 and ran == [2, 3]  # current: nothing runs


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    schema = Schema(
        "test file", (sql("CREATE TABLE a (x)"), sql("CREATE TABLE b (x)", "SELECT * FROM nope"))
    )
    conn = connect(tmp_path / "f.sqlite")
    with pytest.raises(SchemaError, match="test file migration from version 0 to 2 failed"):
        migrate(conn, schema)
    assert file_version(conn) == 0
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == set()


def test_a_file_from_a_newer_swapd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    conn = connect(path)
    conn.execute(f"PRAGMA user_version = {JOURNAL_SCHEMA.version + 1}")
    conn.close()
    with pytest.raises(JournalError) as ei:
        Journal(path)
    msg = str(ei.value)
    assert str(path) in msg and "newer than this swapd reads" in msg
    assert "restore the state backed up before the upgrade" in msg

    db = open_db(tmp_path / "outbox.sqlite", "full")
    db.execute(f"PRAGMA user_version = {OUTBOX_SCHEMA.version + 5}")
    with pytest.raises(OutboxError, match="telemetry outbox has schema version"):
        Outbox(db, 1 << 20)
    db.close()
