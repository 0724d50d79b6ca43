"""Child process for the kill -9 tests: the coordinator + PLC client, events as JSON lines.

`--die-after-intent STEP` makes the process SIGKILL itself right after the journal commit that
records STEP's intent, i.e. before the command reaches the PLC (the worst moment).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from drivers.core.clock import SystemClock  # noqa: E402
from drivers.robot.contract import RobotContract  # noqa: E402
from drivers.robot.modbus_port import ModbusRobotPort  # noqa: E402
from edge.swap.coordinator import SwapCoordinator  # noqa: E402
from edge.swap.journal import Journal, JournalRecord  # noqa: E402
from edge.swap.messages import PackIdentity  # noqa: E402
from edge.swap.steps import load_step_graph  # noqa: E402
from edge.telemetry.models import Details  # noqa: E402
from tests.doubles import RecordingAlarmSink  # noqa: E402
from tests.edge.swap_fixtures import ANNOUNCED, PACK_TYPE, RACK, SLOTS, Outputs, Views  # noqa: E402


class DyingJournal(Journal):
    def __init__(self, path: Path, die_after: str | None) -> None:
        super().__init__(path)
        self.die_after = die_after

    def commit(
        self, ts: str, records: Sequence[JournalRecord], snapshot: dict[str, Any] | None
    ) -> None:
        super().commit(ts, records, snapshot)
        if any(r.kind == "step_intent" and r.data.get("step") == self.die_after for r in records):
            os.kill(os.getpid(), signal.SIGKILL)


class PrintEvents:
    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> None:
        assert isinstance(details, Details), details
        line = {"type": event_type, **details.model_dump(mode="json", by_alias=True)}
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    contract = RobotContract.load()
    graph = load_step_graph(contract=contract)
    journal = DyingJournal(Path(args.journal), args.die_after_intent)
    port = ModbusRobotPort(contract, "127.0.0.1", args.port)
    await port.connect()
    coord = SwapCoordinator(
        graph=graph,
        slot_numbers=SLOTS,
        port=port,
        journal=journal,
        clock=SystemClock(),
        outputs=Outputs(),
        slots=Views(RACK),
        events=PrintEvents(),
        alarms=RecordingAlarmSink(),
        poll_active_s=0.01,
        poll_idle_s=0.05,
    )
    task = asyncio.create_task(coord.run(), name="swap-coordinator")
    async with asyncio.timeout(10):
        await coord.online.wait()
    if args.start:
        for sid, (pid, _, _) in RACK.items():
            await coord.pack_docked(sid, PackIdentity(pid, PACK_TYPE))
        await coord.start_swap("V1", PACK_TYPE, ANNOUNCED)
    await task


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--start", action="store_true")
    p.add_argument("--die-after-intent")
    asyncio.run(main(p.parse_args()))
