"""How tests/data/state/<version>/ is written: v0 on 2026-12-05 by the code before schema
versions existed, v1 the same day by the first versioned code (journal and outbox schema 1).
After a format change, write the new version's fixtures with this script into a new folder.

Kept for the record: the fixtures must stay the bytes that version wrote, so this script is not
rerun by the tests and an existing folder is never rewritten. journal.sqlite: five rack packs docked, a swap started and the process
killed (SIGKILL) right after the journal commit of the `fetch_full` intent. outbox.sqlite: six
events appended and never sent.

    python tests/data/state/make_fixtures.py tests/data/state/vN
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from drivers.robot.contract import RobotContract  # noqa: E402
from edge.telemetry.outbox import Outbox, open_db  # noqa: E402
from sim.devices.robot_plc import RobotPlcSim  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.edge.swap_fixtures import RACK, SLOTS  # noqa: E402

CHILD = ROOT / "tests" / "edge" / "swap_crash_child.py"
EVENTS = [
    ("swap.started", b'{"swap_id":"sw-1","vehicle_id":"V1"}'),
    ("swap.step", b'{"swap_id":"sw-1","step":"fetch_full"}'),
    ("alarm.raised", b'{"code":"pack.over_temperature","slot_id":"s03"}'),
    ("charge.started", b'{"slot_id":"s01","pack_id":"P-1"}'),
    ("charge.stopped", b'{"slot_id":"s01","pack_id":"P-1","energy_kwh":12.5}'),
    ("alarm.cleared", b'{"code":"pack.over_temperature","slot_id":"s03"}'),
]


async def journal(out: Path) -> None:
    contract = RobotContract.load()
    sim = RobotPlcSim(contract, speed=40.0, occupied_slots={SLOTS[s] for s in RACK})
    port = free_port()
    await sim.start("127.0.0.1", port)
    sim.vehicle_arrives()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            "--port",
            str(port),
            "--journal",
            str(out / "journal.sqlite"),
            "--start",
            "--die-after-intent",
            "fetch_full",
        )
        assert await proc.wait() == -signal.SIGKILL
    finally:
        await sim.stop()


def outbox(out: Path) -> None:
    db = open_db(out / "outbox.sqlite", "full")
    box = Outbox(db, 1 << 20, boot_id="fixture0")
    for i, (kind, details) in enumerate(EVENTS):
        box.append(kind, f"2026-12-05T09:00:0{i}Z", details)
    db.close()


def checkpoint(path: Path) -> None:
    # fold the WAL into the file so one file holds everything
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()


if __name__ == "__main__":
    out = Path(sys.argv[1])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    asyncio.run(journal(out))
    outbox(out)
    for f in ("journal.sqlite", "outbox.sqlite"):
        checkpoint(out / f)
