"""Issue 12 outcome 10 / item 8: a corrupt journal or outbox is a clear error with a way out.

Before: a raw traceback and a restart loop. Now `swapd run` exits 2 with one line naming the file
and what to do (systemd: RestartPreventExitStatus=2); `swapd journal check|rebuild` is the way
out; journal records are pruned so the file stays bounded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.swap.journal import Journal, JournalRecord
from tests.edge.station_fixtures import mini_config

ROOT = Path(__file__).resolve().parents[2]
SWAPD = str(Path(sys.executable).with_name("swapd"))

pytestmark = pytest.mark.timeout(60)


def swapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWAPD, *args], capture_output=True, text=True, timeout=45)


def _garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database, it is a disk that lied" * 100)


@pytest.mark.parametrize("name", ["swap-journal.sqlite", "outbox.sqlite"])
def test_corrupt_state_file_exits_2_with_one_line_naming_it(tmp_path: Path, name: str) -> None:
    cfg = mini_config(tmp_path, 1)
    bad = tmp_path / "state" / name
    _garbage(bad)
    r = swapd("run", "--config", str(cfg))
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"swapd: {bad}:"), last
    assert "Traceback" not in r.stderr
    assert ("swapd journal" in last) if "journal" in name else ("move the file aside" in last)


def test_a_snapshot_that_does_not_restore_exits_2(tmp_path: Path) -> None:
    cfg = mini_config(tmp_path, 1)
    j = Journal(tmp_path / "state" / "swap-journal.sqlite")
    j.commit("2026-01-01T00:00:00Z", [], {"phase": 42, "nonsense": True})
    j.close()
    r = swapd("run", "--config", str(cfg))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "swapd journal check" in r.stderr.strip().splitlines()[-1]


def test_journal_check_and_rebuild_are_the_way_out(tmp_path: Path) -> None:
    cfg = str(mini_config(tmp_path, 1))
    bad = tmp_path / "state" / "swap-journal.sqlite"
    _garbage(bad)
    r = swapd("journal", "check", "--config", cfg)
    assert r.returncode == 2 and str(bad) in r.stderr
    r = swapd("journal", "rebuild", "--config", cfg)  # no --yes: nothing moves
    assert r.returncode == 2 and bad.exists()
    r = swapd("journal", "rebuild", "--config", cfg, "--yes")
    assert r.returncode == 0, r.stderr
    assert not bad.exists() and list(bad.parent.glob("swap-journal.sqlite.corrupt-*"))
    r = swapd("journal", "check", "--config", cfg)
    assert r.returncode == 0 and "first boot" in r.stdout


def test_sound_journal_checks_ok(tmp_path: Path) -> None:
    cfg = str(mini_config(tmp_path, 1))
    j = Journal(tmp_path / "state" / "swap-journal.sqlite")
    j.commit("2026-01-01T00:00:00Z", [JournalRecord("note", {"a": 1})], None)
    j.close()
    r = swapd("journal", "check", "--config", cfg)
    assert r.returncode == 0 and "ok, 1 records" in r.stdout, r.stderr


def test_journal_records_are_pruned_so_the_file_stays_bounded(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    j.keep_records, j.prune_every = 50, 10
    for i in range(400):
        j.commit("2026-01-01T00:00:00Z", [JournalRecord("step", {"i": i})], {"n": i})
    assert j.count() <= 50 + 10
    assert j.records()[-1].data == {"i": 399} and j.snapshot() == {"n": 399}
    j.close()


def test_systemd_unit_does_not_restart_on_exit_2() -> None:
    unit = (ROOT / "systemd" / "swapd.service").read_text()
    assert "RestartPreventExitStatus=2" in unit
