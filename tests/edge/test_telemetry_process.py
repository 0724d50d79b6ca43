"""The link as its own process: retained will on kill -9, and events stored before a kill -9
arrive after a restart (replayed, original ts, original msg_id)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import Broker
from tests.edge.telemetry_fixtures import STATION_ID, recorder

ROOT = f"swapstation/v1/{STATION_ID}"
REPO = Path(__file__).resolve().parents[2]


class Runner:
    def __init__(self, port: int, db: Path, events: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.edge.telemetry_runner",
                "--port",
                str(port),
                "--db",
                str(db),
                "--events",
                str(events),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: list[str] = []

    async def wait_line(self, prefix: str, count: int = 1, timeout_s: float = 20) -> list[str]:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            while sum(1 for ln in self.lines if ln.startswith(prefix)) < count:
                line = await loop.run_in_executor(None, self.proc.stdout.readline)
                if not line:
                    raise AssertionError(f"runner exited: {self.lines}")
                self.lines.append(line.decode().strip())
        return [ln.split(" ", 1)[1] for ln in self.lines if ln.startswith(prefix)]

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def test_kill9_publishes_the_retained_will(mosquitto: Broker, tmp_path: Path) -> None:
    r = Runner(mosquitto.port, tmp_path / "outbox.sqlite")
    try:
        boot_id = (await r.wait_line("READY"))[0]
        async with recorder(mosquitto.host, mosquitto.port, f"{ROOT}/status") as rec:
            await rec.wait_for(lambda: any(m.json()["online"] for m in rec.messages))
            assert rec.messages[-1].json()["boot_id"] == boot_id
            async with recorder(mosquitto.host, mosquitto.port, f"{ROOT}/status") as late:
                await late.wait_for(lambda: len(late.messages) >= 1)
                assert late.messages[0].retain and late.messages[0].json()["online"] is True
            r.kill9()
            await rec.wait_for(lambda: not rec.messages[-1].json()["online"])
            assert rec.messages[-1].json()["boot_id"] == boot_id
    finally:
        r.kill9()
    # Retained: a subscriber arriving later still learns the station is offline.
    async with recorder(mosquitto.host, mosquitto.port, f"{ROOT}/status") as late:
        await late.wait_for(lambda: len(late.messages) >= 1)
        assert late.messages[0].retain and late.messages[0].json()["online"] is False


async def test_events_stored_before_kill9_arrive_after_restart(
    mosquitto: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.sqlite"
    n = 40
    mosquitto.kill9()  # the broker is down: everything goes to the outbox
    r = Runner(mosquitto.port, db, events=n)
    try:
        emitted = await r.wait_line("EMITTED", n)
        first_boot = (await r.wait_line("READY"))[0]
    finally:
        r.kill9()
    mosquitto.start()
    async with recorder(mosquitto.host, mosquitto.port, f"{ROOT}/event/#") as rec:
        r2 = Runner(mosquitto.port, db)
        try:
            second_boot = (await r2.wait_line("READY"))[0]
            await rec.wait_for(lambda: len({e["msg_id"] for e in rec.events()}) >= n)
        finally:
            r2.kill9()
    assert second_boot != first_boot
    evs = rec.events()
    ids = [e["msg_id"] for e in evs]
    assert ids[:n] == emitted == [f"{first_boot}:{i}" for i in range(1, n + 1)]
    assert all(e["replayed"] for e in evs)
    assert [e["details"]["step"] for e in evs[:n]] == [f"k{i}" for i in range(n)]
    ts = [e["ts"] for e in evs[:n]]
    assert ts == sorted(ts)
