"""The composed daemon against an independent robot PLC (tests/conformance/robot_plc.py) with
independent GB/T BMS peers in the rack slots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge.cli.ctl import request
from tests.conformance.gbt_bms import BmsPeerConfig, Phase, wait_until
from tests.conformance.rig import Daemon, Rig, conformance_station
from tests.conformance.robot_plc import ESTOP

pytestmark = pytest.mark.timeout(120)
# Each test's own bound, under pytest-timeout: a stuck wait fails with its traceback and the rig
# still tears down (pytest-timeout would interrupt the loop and leave the teardown undone).
BODY_S = 100.0

FULL = BmsPeerConfig(serial=1, soc_pct=94.6, target_soc_pct=95.0, capacity_ah=20.0)
VEHICLE_PACK = BmsPeerConfig(
    serial=0x10001, vin="LVEHICLE000000001", soc_pct=20.0, target_soc_pct=95.0, capacity_ah=20.0
)
ALL_STEPS = {
    ("vehicle", s)
    for s in (
        "position",
        "lift",
        "unlock",
        "lower_pack",
        "shuttle_to_handoff",
        "shuttle_to_vehicle",
        "raise_and_seat",
        "lock",
        "verify",
        "lower_vehicle",
        "release",
    )
} | {("rack", s) for s in ("fetch", "take", "give", "store")}


def pack_id(cfg: BmsPeerConfig) -> str:
    # The daemon names a pack after its BRM: manufacturer, pack serial number, VIN.
    return f"{cfg.manufacturer}-{cfg.serial:08X}-{cfg.vin}"


async def start_swap(rig: Rig, params: dict[str, Any], timeout_s: float = 30.0) -> None:
    """Ask as a vehicle would, again while the daemon still refuses (rack not identified yet).
    A child daemon is asked over its ctl socket (`swapd ctl start-swap`)."""
    last: object = None

    async def attempt() -> bool:
        nonlocal last
        if rig.station is None:
            sock = str(rig.config.station.ctl_socket)
            reply = await asyncio.to_thread(request, sock, "start_swap", params, 5.0)
            last = reply
            return bool(reply.get("ok"))
        try:
            await rig.station.swap.coordinator.execute("start_swap", params)
            return True
        except Exception as e:  # noqa: BLE001 - the refusal reason is kept for the failure
            last = e
            return False

    try:
        async with asyncio.timeout(timeout_s):
            while not await attempt():
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"start_swap refused for {timeout_s} s: {last}") from None


def plc_report(rig: Rig) -> list[str]:
    return [str(v) for v in rig.plc.violations]


@pytest.mark.parametrize("daemon", ["in-process", "process"])
async def test_full_swap(tmp_path: Path, daemon: Daemon) -> None:
    """A vehicle arrives; the daemon runs all 15 steps; the full pack leaves slot 1 only with
    its output off, the depleted pack is stored in slot 2 and its BMS is then charged. With
    `swapd run` in a child process the BMS peers are reached over SLCAN/TCP."""
    async with (
        asyncio.timeout(BODY_S),
        conformance_station(tmp_path, 2, {1: FULL}, step_s=0.1, daemon=daemon) as rig,
    ):
        full = rig.seats[0].peer
        assert full is not None
        # The full pack is identified (a session runs; the scheduler gives it nothing).
        await wait_until(lambda: full.phase in (Phase.CHARGING, Phase.ENDED), 40)
        rig.arriving[pack_id(VEHICLE_PACK)] = VEHICLE_PACK
        rig.plc.vehicle_arrives(pack_id(VEHICLE_PACK))
        await start_swap(
            rig,
            {"vehicle_id": "V-1", "pack_type": "LFP", "announced_pack_id": pack_id(VEHICLE_PACK)},
        )
        await wait_until(
            lambda: (
                ("vehicle", "release") in {(m.unit, m.step) for m in rig.plc.motions}
                and rig.plc.units["vehicle"].state == 2
                and rig.plc.units["rack"].state == 2
            ),
            60,
        )
        stored = rig.seats[1]
        await wait_until(
            lambda: stored.peer is not None and stored.peer.phase is Phase.CHARGING, 30
        )
        assert rig.plc.slot_packs == {1: None, 2: pack_id(VEHICLE_PACK)}
        assert rig.plc.places["vehicle"] is None  # left with the full pack
    assert plc_report(rig) == []
    assert {(m.unit, m.step) for m in rig.plc.motions} == ALL_STEPS
    assert len(rig.plc.motions) == 15
    assert [str(v) for v in full.violations] == []
    assert stored.peer is None or [str(v) for v in stored.history[-1].violations] == []


async def test_emergency_stop(tmp_path: Path) -> None:
    """The e-stop chain opens mid-swap while another slot charges: the PLC faults the running
    step, the daemon halts both units, switches every output off (the charging pack sees its
    current fall to <= 5 A) and commands nothing until the chain is healthy and reset."""
    charging = BmsPeerConfig(serial=3, soc_pct=40.0, target_soc_pct=95.0, capacity_ah=20.0)
    async with (
        asyncio.timeout(BODY_S),
        conformance_station(tmp_path, 3, {1: FULL, 3: charging}, step_s=0.3) as rig,
    ):
        full, busy = rig.seats[0].peer, rig.seats[2].peer
        assert full is not None and busy is not None
        await wait_until(
            lambda: full.phase in (Phase.CHARGING, Phase.ENDED) and busy.delivered_a > 50.0, 40
        )
        rig.arriving[pack_id(VEHICLE_PACK)] = VEHICLE_PACK
        rig.plc.vehicle_arrives(pack_id(VEHICLE_PACK))
        await start_swap(
            rig,
            {"vehicle_id": "V-1", "pack_type": "LFP", "announced_pack_id": pack_id(VEHICLE_PACK)},
        )
        await wait_until(lambda: len(rig.plc.motions) >= 3, 30)
        rig.plc.set_input(ESTOP, False)
        busy.expect_output_off(0.1)  # as after a CST (GB/T 27930: <= 5 A within 100 ms)
        await wait_until(lambda: rig.plc.halt == 3, 2.0)
        await wait_until(lambda: busy.stop_latency_s is not None, 5.0)
        # The station holds outputs off and may keep the session up at zero current (charging
        # resumes after a reset); a CST, if it ends the session, must name the e-stop
        # (GB/T 27930 CST: fault stop, byte 1 bits 5-6, with SPN3522 emergency stop, byte 3).
        for cst in busy.cst:
            assert cst[0] >> 4 & 3 == 1 and cst[2] & 3 == 1, f"e-stop CST {cst.hex()}"
        moved = len(rig.plc.motions)
        rig.plc.set_input(ESTOP, True)
        await asyncio.sleep(1.5)
        assert len(rig.plc.motions) == moved, "a motion after the e-stop without a reset"
        assert rig.plc.halt == 3
    assert plc_report(rig) == []
    assert [str(v) for v in busy.violations] == []
    assert busy.stop_latency_s is not None and busy.stop_latency_s <= 0.1 + 1.5
