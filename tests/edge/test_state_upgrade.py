"""State files written by earlier versions open with this one: every pack, the swap in flight and
every unsent event are found. The fixtures in tests/data/state/<version>/ are the bytes that
version wrote (see make_fixtures.py); they are never regenerated. Each opens at the current
schema version (edge/schema.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from drivers.robot.contract import RobotContract
from edge.schema import file_version
from edge.swap.journal import JOURNAL_SCHEMA, Journal
from edge.swap.snapshot import restore
from edge.swap.steps import load_step_graph
from edge.telemetry.outbox import OUTBOX_SCHEMA, Outbox, open_db
from tests.edge.swap_fixtures import SLOTS

DATA = Path(__file__).resolve().parents[1] / "data" / "state"
VERSIONS = sorted(p.name for p in DATA.iterdir() if p.is_dir())

PACKS = {"P-001": "slot:S1", "P-002": "slot:S2", "P-003": "slot:S3", "P-CAR-1": "vehicle"}
EVENTS = [
    "swap.started",
    "swap.step",
    "alarm.raised",
    "charge.started",
    "charge.stopped",
    "alarm.cleared",
]


def test_fixtures_cover_the_unversioned_files_and_the_current_schema() -> None:
    assert "v0" in VERSIONS
    assert f"v{max(JOURNAL_SCHEMA.version, OUTBOX_SCHEMA.version)}" in VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_journal_of_every_version_restores_packs_and_swap(version: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    shutil.copy(DATA / version / "journal.sqlite", path)
    journal = Journal(path)
    try:
        snap = journal.snapshot()
        assert journal.found_version == int(version[1:])
        assert file_version(journal._db) == JOURNAL_SCHEMA.version
    finally:
        journal.close()
    assert snap is not None
    graph = load_step_graph(contract=RobotContract.load())
    core = restore(graph, SLOTS, snap)
    assert {p.pack_id: str(p.place) for p in core.inventory.packs()} == PACKS
    assert core.swap is not None and core.swap.swap_id == "swap-000001"
    assert core.swap.full_pack_id == "P-002"


@pytest.mark.parametrize("version", VERSIONS)
def test_outbox_of_every_version_keeps_unsent_events(version: str, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    shutil.copy(DATA / version / "outbox.sqlite", path)
    db = open_db(path, "full")
    try:
        box = Outbox(db, 1 << 20)
        pending = box.pending(0)
        assert box.found_version == int(version[1:])
        assert file_version(db) == OUTBOX_SCHEMA.version
    finally:
        db.close()
    assert [e.type for e in pending] == EVENTS
    assert [e.msg_id for e in pending] == [f"fixture0:{i}" for i in range(1, 7)]
