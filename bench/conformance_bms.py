"""Figures from the conformance BMS (tests/conformance/gbt_bms.py) against the composed station:
one full GB/T 27930 session (40 % -> 50 % of a 2 Ah pack at 100 A): CCS period median / p99 /
max by the charger's send timestamps, BST -> CST answer, BST -> current <= 5 A, violations.

    .venv/bin/python bench/conformance_bms.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from tests.conformance.gbt_bms import BmsPeerConfig, wait_until  # noqa: E402
from tests.conformance.rig import conformance_station  # noqa: E402


async def main() -> None:
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=50.0, capacity_ah=2.0)
    with tempfile.TemporaryDirectory() as d:
        async with conformance_station(Path(d), 1, {1: cfg}) as rig:
            p = rig.seats[0].peer
            assert p is not None
            await wait_until(lambda: p.ended.is_set() and p.stop_latency_s is not None, 60)
    gaps = sorted(b.t_wall - a.t_wall for a, b in zip(p.ccs, p.ccs[1:], strict=False))
    print(
        f"CCS frames {len(p.ccs)}: period median {gaps[len(gaps) // 2] * 1000:.1f} ms, "
        f"p99 {gaps[int(0.99 * (len(gaps) - 1))] * 1000:.1f} ms, max {gaps[-1] * 1000:.1f} ms"
    )
    answer = [d for _, what, d in p.log if what == "cst_answer"]
    print(f"BST -> CST {answer[0] if answer else 'none'}; BST -> <= 5 A {p.stop_latency_s:.3f} s")
    print(f"violations: {[str(v) for v in p.violations] or 'none'}")


if __name__ == "__main__":
    asyncio.run(main())
