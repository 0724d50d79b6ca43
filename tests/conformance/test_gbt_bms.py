"""The composed daemon against an independent GB/T 27930 BMS (tests/conformance/gbt_bms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.gbt_bms import BmsPeerConfig, Phase, ccs_period_stats, wait_until
from tests.conformance.rig import conformance_station

pytestmark = pytest.mark.timeout(120)


async def test_full_charge_session_to_the_end(tmp_path: Path) -> None:
    """Handshake to statistics: the BMS charges from 40 % to its 50 % target, stops with BST
    (SOC reached), the charger answers CST 'BMS stopped', BSD/CSD close the session."""
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=50.0, capacity_ah=2.0, demand_a=100.0)
    async with conformance_station(tmp_path, 1, {1: cfg}) as rig:
        peer = rig.seats[0].peer
        assert peer is not None
        await wait_until(lambda: peer.ended.is_set() or peer.phase is Phase.ERROR, 60)
        assert peer.phase is Phase.ENDED, [str(v) for v in peer.violations]
        await wait_until(lambda: peer.stop_latency_s is not None, 15)
    assert [str(v) for v in peer.violations] == []
    assert peer.sessions == 1
    assert peer.cst and peer.cst[0][0] >> 6 & 3 == 1  # "BMS stopped"
    assert peer.csd is not None and peer.csd[2] == peer.crm_number
    median, worst, n = ccs_period_stats(peer.ccs)
    assert n > 50
    assert 0.045 <= median <= 0.055, f"CCS period median {median * 1000:.1f} ms"
    assert worst < 1.0, f"CCS gap {worst:.3f} s (the BMS times out at 1 s)"
    assert peer.stop_latency_s is not None and peer.stop_latency_s < 10.0


async def test_bms_initiated_stop(tmp_path: Path) -> None:
    """BST (total voltage reached) mid-charge: CST 'BMS stopped' within 5 s, the output
    falls to <= 5 A (the standard allows 10 s), then BSD/CSD."""
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=95.0, capacity_ah=20.0)
    async with conformance_station(tmp_path, 1, {1: cfg}) as rig:
        peer = rig.seats[0].peer
        assert peer is not None
        await wait_until(lambda: peer.delivered_a > 50.0, 30)
        peer.request_stop(0x04)
        await wait_until(lambda: peer.ended.is_set() or peer.phase is Phase.ERROR, 20)
        assert peer.phase is Phase.ENDED, [str(v) for v in peer.violations]
        await wait_until(lambda: peer.stop_latency_s is not None, 15)
    assert [str(v) for v in peer.violations] == []
    assert peer.cst[0][0] >> 6 & 3 == 1
    assert peer.stop_latency_s is not None and peer.stop_latency_s < 10.0


async def test_bms_timeout_cem_then_rehandshake(tmp_path: Path) -> None:
    """The BMS falls silent while charging: the charger must send CEM with SPN3925 (BCL
    timeout), stop its output, and re-handshake from CRM 0x00 when the BMS answers again."""
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=95.0, capacity_ah=20.0)
    async with conformance_station(tmp_path, 1, {1: cfg}) as rig:
        peer = rig.seats[0].peer
        assert peer is not None
        await wait_until(lambda: peer.delivered_a > 50.0, 30)
        peer.go_silent()
        await wait_until(lambda: 3925 in peer.cem_codes, 5)
        await wait_until(lambda: peer.stop_latency_s is not None, 5)
        latency = peer.stop_latency_s
        peer.resume()
        await wait_until(lambda: peer.sessions >= 2 and peer.delivered_a > 50.0, 30)
    assert [str(v) for v in peer.violations] == []
    # Silence -> current <= 5 A: the BCL timeout (1 s) plus the simulated charger's ramp.
    assert latency is not None and latency <= 1.0 + 1.5
    assert any(what == "rehandshake" for _, what, _ in peer.log)


@pytest.mark.parametrize("demand_a", [60.0, 100.0])
async def test_pack_gets_what_it_asks_for(tmp_path: Path, demand_a: float) -> None:
    """With the BCL demand the only limit (600 kW cap, 60 kW charger, BCP 150 A), the current
    delivered and reported in CCS settles at the demand within max(1 A, 1 %) and stays there.
    (Settling waits for one scheduler period: a grant sized at the request at the pack's
    earlier voltage binds until the next allocation, 98.9 A for 100 A for ~4 s.)"""
    cfg = BmsPeerConfig(soc_pct=40.0, target_soc_pct=95.0, capacity_ah=50.0, demand_a=demand_a)
    tol = max(1.0, 0.01 * demand_a)
    async with conformance_station(tmp_path, 1, {1: cfg}) as rig:
        peer = rig.seats[0].peer
        assert peer is not None

        def met() -> bool:
            last = peer.ccs[-1] if peer.ccs else None
            return last is not None and abs(last.current_a - demand_a) <= tol

        await wait_until(lambda: met() and abs(peer.delivered_a - demand_a) <= tol, 20)
        settled = len(peer.ccs)
        await wait_until(lambda: len(peer.ccs) >= settled + 40, 10)  # 2 s of CCS
        held = peer.ccs[settled:]
    worst = max(held, key=lambda s: abs(s.current_a - demand_a))
    assert abs(worst.current_a - demand_a) <= tol, f"CCS {worst.current_a:.1f} A for {demand_a}"
    worst = max(held, key=lambda s: abs(s.delivered_a - demand_a))
    assert abs(worst.delivered_a - demand_a) <= tol, f"{worst.delivered_a:.1f} A for {demand_a}"
    assert [str(v) for v in peer.violations] == []
