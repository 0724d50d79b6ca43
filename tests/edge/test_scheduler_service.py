"""The live scheduler service on a manual clock: period, triggers, leases from wall time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from edge.scheduler.core import Allocation, InvalidRequestError, Scheduler, SlotInput
from edge.scheduler.policies import NaivePolicy
from edge.scheduler.service import SchedulerService
from tests.doubles import ManualClock
from tests.edge.scheduler_fixtures import grid_config


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(2.0):
        while not cond():
            await asyncio.sleep(0)


async def _advance(clock: ManualClock, seconds: float) -> None:
    """Move the clock once the service is asleep on it (else its sleep starts later)."""
    await _until(lambda: clock.sleepers >= 1)
    clock.advance(seconds)


@asynccontextmanager
async def _running(
    clock: ManualClock, slots: list[SlotInput]
) -> AsyncIterator[tuple[SchedulerService, list[Allocation]]]:
    published: list[Allocation] = []
    sched = Scheduler(grid_config(cap_kw=600), NaivePolicy())
    svc = SchedulerService(sched, clock, lambda: list(slots), published.append)
    task = asyncio.create_task(svc.run(), name="scheduler")
    try:
        yield svc, published
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _packs(n: int) -> list[SlotInput]:
    return [SlotInput(f"s{i}", 20.0, 60.0, 60.0, docked_at_s=i) for i in range(n)]


async def test_allocates_every_period_and_at_once_on_a_trigger(clock: ManualClock) -> None:
    slots = _packs(3)
    async with _running(clock, slots) as (svc, pub):
        await _until(lambda: len(pub) == 1)
        assert pub[0].total_kw == pytest.approx(180)
        await _advance(clock, 4.9)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(pub) == 1
        await _advance(clock, 0.1)
        await _until(lambda: len(pub) == 2)
        assert pub[1].trigger == "period"
        # A pack docks: reallocated without waiting for the period (no clock movement).
        slots.append(SlotInput("s3", 10.0, 60.0, 60.0, docked_at_s=10))
        svc.trigger("pack_docked")
        await _until(lambda: len(pub) == 3)
        assert pub[2].trigger == "pack_docked" and pub[2].total_kw == pytest.approx(240)
        assert pub[2].at.t_s == pub[1].at.t_s


async def test_set_power_limit_lease_reverts_to_default(clock: ManualClock) -> None:
    async with _running(clock, _packs(12)) as (svc, pub):
        await _until(lambda: len(pub) == 1)
        assert pub[-1].limit_kw == 600
        svc.set_power_limit(240, valid_until=clock.now() + timedelta(seconds=12))
        await _until(lambda: len(pub) == 2)
        assert pub[-1].limit_source == "dispatch" and pub[-1].total_kw == pytest.approx(240)
        # Periods under the lease keep it; the lease end brings the cap back by itself.
        await _advance(clock, 10)
        await _until(lambda: len(pub) == 3)
        assert pub[-1].total_kw == pytest.approx(240)
        await _advance(clock, 2)
        await _until(lambda: len(pub) == 4)
        assert pub[-1].limit_source == "cap" and pub[-1].total_kw == pytest.approx(600)
        assert "dispatch_limit_expired" in pub[-1].trigger
        with pytest.raises(InvalidRequestError):
            svc.set_power_limit(100, valid_until=clock.now() - timedelta(seconds=1))


async def test_a_failing_slot_reader_does_not_stop_the_loop(clock: ManualClock) -> None:
    calls = {"n": 0}

    def flaky() -> list[SlotInput]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("slot table busy")
        return _packs(1)

    published: list[Allocation] = []
    svc = SchedulerService(Scheduler(grid_config(), NaivePolicy()), clock, flaky, published.append)
    task = asyncio.create_task(svc.run(), name="scheduler")
    try:
        await _until(lambda: svc.errors == 1)
        await _advance(clock, 5)
        await _until(lambda: len(published) == 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_time_of_day_is_local(clock: ManualClock) -> None:
    # ManualClock starts at 2026-01-01T00:00Z, i.e. 08:00 in Asia/Shanghai.
    svc = SchedulerService(Scheduler(grid_config(), NaivePolicy()), clock, list, print)
    assert svc.instant().day_s == pytest.approx(8 * 3600)
    assert svc.allocate_now().tariff_period == "peak"


async def test_a_bcl_above_the_grant_is_met_without_waiting_for_the_period(
    clock: ManualClock,
) -> None:
    """Issue 13: the BMS raises its BCL from 60 A to 100 A. The slot's grant was sized at the
    60 A request; the slot asks for a new allocation at once (`grant_binds`, as the publisher
    does on every slot change) and the setpoint follows at the same instant (the clock does
    not move), the scheduler's grant staying the cap."""
    from drivers.can.events import ChargeMode, ChargeRequest, Phase, PhaseChanged
    from edge.power import to_grid_side, to_pack_side
    from edge.slot.core import ChargerRatings, ChargerReading, SetChargerOutput, SlotCore

    eff = 0.95
    core = SlotCore("s0", ChargerRatings(750.0, 150.0, 150.0, 60.0))
    core.start(clock.monotonic())
    for ev in (
        PhaseChanged(Phase.IDLE, Phase.HANDSHAKE),
        PhaseChanged(Phase.HANDSHAKE, Phase.CHARGING),
    ):
        core.on_session_event(ev, clock.monotonic())
    core.on_reading(ChargerReading(350.0, 0.0, True), clock.monotonic())
    outs: list[SetChargerOutput] = []

    def read() -> list[SlotInput]:
        core.scheduled_request_kw = core.request_kw()  # as SlotService.slot_input
        bms = to_grid_side(core.request_kw(), eff)
        return [SlotInput("s0", 40.0, bms, to_grid_side(60.0, eff))]

    def apply(alloc: Allocation) -> None:
        for g in alloc.grants:
            outs.extend(
                a
                for a in core.set_grant(to_pack_side(g.power_kw, eff), clock.monotonic())
                if isinstance(a, SetChargerOutput)
            )

    published: list[Allocation] = []
    sched = Scheduler(grid_config(cap_kw=600), NaivePolicy())
    svc = SchedulerService(sched, clock, read, lambda a: (published.append(a), apply(a)))
    task = asyncio.create_task(svc.run(), name="scheduler")
    try:
        now = clock.monotonic()
        core.on_session_event(ChargeRequest(400.0, 60.0, ChargeMode.CONSTANT_CURRENT), now)
        svc.trigger("docked")
        await _until(lambda: bool(outs) and outs[-1].current_a == 60.0)
        assert not core.grant_binds()
        await _advance(clock, 1.0)  # mid-period: the next one is 4 s away
        t_bcl = clock.monotonic()
        acts = core.on_session_event(
            ChargeRequest(400.0, 100.0, ChargeMode.CONSTANT_CURRENT), t_bcl
        )
        # The old grant caps it (60 A still): it binds, so the slot asks.
        assert [a for a in acts if isinstance(a, SetChargerOutput)] == []
        assert core.grant_binds()
        svc.trigger("slot s0 request")
        await _until(lambda: outs[-1].current_a == 100.0)
        assert clock.monotonic() == t_bcl and published[-1].at.t_s == t_bcl
        assert published[-1].trigger == "slot s0 request"
        assert not core.grant_binds()  # no storm of reallocations at every BCL
        # Nor at every reading: pack voltage noise of 0.2 % moves the request's kW that much.
        core.on_reading(ChargerReading(350.7, 100.0, True), t_bcl)
        assert not core.grant_binds()
        core.on_reading(ChargerReading(350.0, 100.0, True), t_bcl)
        core.on_session_event(ChargeRequest(400.0, 100.0, ChargeMode.CONSTANT_CURRENT), t_bcl)
        assert not core.grant_binds()
        # A lower BCL needs no scheduler at all: applied in the same call.
        acts = core.on_session_event(ChargeRequest(400.0, 50.0, ChargeMode.CONSTANT_CURRENT), t_bcl)
        assert [a for a in acts if isinstance(a, SetChargerOutput)][-1].current_a == 50.0
        assert not core.grant_binds()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
