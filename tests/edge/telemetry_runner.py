"""A telemetry link with a fake station, as its own process (for kill -9 tests).

    python -m tests.edge.telemetry_runner --port P --db PATH [--events N]

Prints `READY <boot_id>` once it runs and `EMITTED <msg_id>` per event (flushed), then idles.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tests.edge.telemetry_fixtures import make_telemetry, robot, slot, station


async def main(args: argparse.Namespace) -> None:
    tel = make_telemetry(
        "127.0.0.1",
        args.port,
        Path(args.db).parent,
        outbox_path=Path(args.db),
        outbox_synchronous="full",
    )
    tel.update_station(station())
    tel.update_slot("s01", slot())
    tel.update_robot(robot())
    async with asyncio.TaskGroup() as tg:
        tg.create_task(tel.run(), name="telemetry")
        print(f"READY {tel.boot_id}", flush=True)
        for i in range(args.events):
            mid = tel.emit_event("swap.step", {"swap_id": "w1", "step": f"k{i}", "state": "done"})
            print(f"EMITTED {mid}", flush=True)
            await asyncio.sleep(0.001)
        await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--events", type=int, default=0)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
