"""kill -9 of the coordinator process during every step: restart resumes from the journal and
the PLC's acknowledged sequence counter; no motion runs twice; inventory stays consistent."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest

from drivers.robot.contract import RobotContract
from edge.swap.inventory import Inventory
from edge.swap.journal import Journal
from edge.swap.steps import load_step_graph
from sim.devices.robot_plc import RobotPlcSim
from tests.conftest import free_port
from tests.edge.swap_fixtures import RACK, SLOTS, check_occupancy

CHILD = Path(__file__).with_name("swap_crash_child.py")


def intents(journal: Path) -> set[str]:
    if not journal.exists():
        return set()
    db = sqlite3.connect(journal)
    try:
        rows = db.execute("SELECT data FROM records WHERE kind = 'step_intent'").fetchall()
    except sqlite3.OperationalError:
        return set()
    finally:
        db.close()
    return {orjson.loads(r[0])["step"] for r in rows}


async def spawn(port: int, journal: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        "--port",
        str(port),
        "--journal",
        str(journal),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def until(pred: object, timeout_s: float = 15.0) -> None:
    assert callable(pred)
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.005)


@pytest.mark.slow
@pytest.mark.timeout(180)  # 16 process starts; slow on a loaded 2-core machine
async def test_kill9_during_every_step_then_restart(tmp_path: Path) -> None:
    contract = RobotContract.load()
    graph = load_step_graph(contract=contract)
    sim = RobotPlcSim(contract, speed=40.0, occupied_slots={SLOTS[s] for s in RACK})
    tcp = free_port()
    await sim.start("127.0.0.1", tcp)
    journal = tmp_path / "journal.sqlite"
    sim.vehicle_arrives()
    killed: list[tuple[str, str]] = []
    proc: asyncio.subprocess.Process | None = None
    try:
        for i, step in enumerate(graph.order()):
            unit = graph.step(step).unit
            first = i == 0
            if step not in intents(journal) and i % 2 == 0:
                # die between the journal commit of the intent and the PLC write
                proc = await spawn(
                    tcp, journal, *(["--start"] if first else []), "--die-after-intent", step
                )
                async with asyncio.timeout(20):
                    rc = await proc.wait()
                assert rc == -signal.SIGKILL
                killed.append((step, "after-intent"))
            else:
                proc = await spawn(tcp, journal, *(["--start"] if first else []))
                plc_step = graph.step(step).plc_step

                def started(u: str = unit, name: str = plc_step) -> bool:
                    return any(m.step == name and m.unit == u for m in sim.motions)

                try:
                    await until(started)
                except TimeoutError:
                    raise AssertionError(
                        f"{step} never started; killed {killed}; motions {sim.motions}"
                    ) from None
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                killed.append((step, f"while-{sim.units[unit].state.name.lower()}"))
        proc = await spawn(tcp, journal)
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = await proc.stdout.readline()
                assert line, "child exited before the swap completed"
                if orjson.loads(line)["type"] == "swap.completed":
                    break
        proc.terminate()
        await proc.wait()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.stop()
    assert len(killed) == 15, killed
    # every motion exactly once, in spite of 15 kills
    motions = [(m.unit, m.step) for m in sim.motions]
    assert len(motions) == len(set(motions)) == 15, motions
    j = Journal(journal)
    snap = j.snapshot()
    j.close()
    assert snap is not None and snap["swap"] is None and snap["mode"] == "idle"
    inv = Inventory.from_json(frozenset(SLOTS), snap["inventory"])
    assert inv.problems() == []
    check_occupancy(sim, inv)
    assert inv.get("P-CAR-1") is not None and str(inv.get("P-CAR-1").place) == "slot:S4"  # type: ignore[union-attr]
