"""Schema versions of the station's SQLite state files (swap journal, telemetry outbox).

Each file keeps its version in SQLite's own header field (`PRAGMA user_version`). Version 0 is
a file written before versions existed (tests/data/state/v0) or a brand-new empty file; the
migration to version 1 is the baseline schema, written with `IF NOT EXISTS` so it fits both.
A format change appends one migration to the file's list; opening a file runs the missing ones
in one transaction (the version moves with them, so a failed migration leaves the file as it
was). A file from a newer swapd is refused: a rollback restores the state backed up before the
upgrade (README "Operations").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

Migration = Callable[[sqlite3.Connection], None]


class SchemaError(RuntimeError):
    """The file cannot be brought to this version (newer than this swapd, or a migration failed)."""


@dataclass(frozen=True, slots=True)
class Schema:
    """`migrations[i]` takes a file from version i to i + 1."""

    name: str
    migrations: tuple[Migration, ...]

    @property
    def version(self) -> int:
        return len(self.migrations)


def sql(*statements: str) -> Migration:
    """A migration made of SQL statements, run in order."""

    def run(conn: sqlite3.Connection) -> None:
        for s in statements:
            conn.execute(s)

    return run


def file_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, schema: Schema, where: str = "") -> int:
    """Bring an open file to `schema.version`; returns the version it had. The connection must
    be in autocommit mode (isolation_level=None). Raises SchemaError."""
    label = f"{where}: " if where else ""
    found = file_version(conn)
    if found > schema.version:
        raise SchemaError(
            f"{label}{schema.name} has schema version {found}, newer than this swapd reads"
            f" ({schema.version}); run the newer swapd or restore the state backed up before"
            " the upgrade"
        )
    if found == schema.version:
        return found
    try:
        conn.execute("BEGIN IMMEDIATE")
        for step in range(found, schema.version):
            schema.migrations[step](conn)
        # Part of the transaction: the header changes only if every migration ran.
        conn.execute(f"PRAGMA user_version = {schema.version:d}")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise SchemaError(
            f"{label}{schema.name} migration from version {found} to {schema.version} failed: {e}"
        ) from e
    return found
