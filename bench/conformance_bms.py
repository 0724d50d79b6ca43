"""Figures from the conformance BMS (tests/conformance/gbt_bms.py) against the station, both
composed in this process and as `swapd run` in a child process (BMS over SLCAN over TCP):

- one full GB/T 27930 session (40 % -> 50 % of a 2 Ah pack at 100 A): CCS period median / p99 /
  max by the charger's send timestamps, BST -> CST answer, BST -> current <= 5 A, violations;
- BCL -> charger lag: the BMS steps its BCL 60 <-> 100 A (8 steps, 1.5 s apart, mid scheduler
  period); time from the new demand to the charger simulator's current-limit register within
  1 A of it (polled every 1 ms), and to the first CCS reporting it (the simulator ramps 100 A/s).

    .venv/bin/python bench/conformance_bms.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from tests.conformance.gbt_bms import BmsPeerConfig, wait_until  # noqa: E402
from tests.conformance.rig import Daemon, conformance_station  # noqa: E402


async def session(daemon: Daemon) -> None:
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=50.0, capacity_ah=2.0)
    with tempfile.TemporaryDirectory() as d:
        async with conformance_station(Path(d), 1, {1: cfg}, daemon=daemon) as rig:
            p = rig.seats[0].peer
            assert p is not None
            await wait_until(lambda: p.ended.is_set() and p.stop_latency_s is not None, 60)
    gaps = sorted(b.t_wall - a.t_wall for a, b in zip(p.ccs, p.ccs[1:], strict=False))
    print(
        f"[{daemon}] CCS frames {len(p.ccs)}: period median {gaps[len(gaps) // 2] * 1000:.1f} ms,"
        f" p99 {gaps[int(0.99 * (len(gaps) - 1))] * 1000:.1f} ms, max {gaps[-1] * 1000:.1f} ms"
    )
    answer = [d for _, what, d in p.log if what == "cst_answer"]
    print(
        f"[{daemon}] BST -> CST {answer[0] if answer else 'none'}; "
        f"BST -> <= 5 A {p.stop_latency_s:.3f} s"
    )
    print(f"[{daemon}] violations: {[str(v) for v in p.violations] or 'none'}")


async def bcl_steps(daemon: Daemon, steps: int = 8) -> None:
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=95.0, capacity_ah=50.0, demand_a=60.0)
    limit_lags: list[float] = []
    ccs_lags: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        async with conformance_station(Path(d), 1, {1: cfg}, daemon=daemon) as rig:
            p = rig.seats[0].peer
            assert p is not None
            sim = rig.chargers[rig.config.slots[0].charger]

            def limit() -> float:
                v = sim.get("current_limit_a")
                return float(v) if v is not None else 0.0

            await wait_until(lambda: abs(p.delivered_a - 60.0) <= 1.0, 30)
            for i in range(steps):
                await asyncio.sleep(1.5)
                target = 100.0 if i % 2 == 0 else 60.0
                t0 = time.monotonic()
                p.set_demand(target)
                await wait_until(lambda: abs(limit() - target) <= 1.0, 10, 0.001)  # noqa: B023
                limit_lags.append(time.monotonic() - t0)
                await wait_until(
                    lambda: bool(p.ccs) and abs(p.ccs[-1].current_a - target) <= 1.0,  # noqa: B023
                    10,
                    0.001,
                )
                ccs_lags.append(time.monotonic() - t0)
    for name, lags in (("charger limit", limit_lags), ("CCS current", ccs_lags)):
        ms = [x * 1000 for x in lags]
        print(
            f"[{daemon}] BCL -> {name}: median {statistics.median(ms):.0f} ms, "
            f"max {max(ms):.0f} ms over {len(ms)} steps"
        )


async def main() -> None:
    daemons: tuple[Daemon, ...] = ("in-process", "process")
    for daemon in daemons:
        await session(daemon)
        await bcl_steps(daemon)


if __name__ == "__main__":
    asyncio.run(main())
