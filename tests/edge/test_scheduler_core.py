"""The scheduler core: allocation invariants (hypothesis), leases, triggers, tariff, forecast."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge.scheduler.core import (
    ExportNotSupportedError,
    GridMode,
    Instant,
    InvalidRequestError,
    Scheduler,
    SlotInput,
    is_ready,
)
from edge.scheduler.forecast import SwapForecast
from edge.scheduler.policies import NaivePolicy, SmartPolicy, make_policy
from edge.scheduler.tariff import Tariff
from tests.edge.scheduler_fixtures import TARIFF, grid_config

slot_st = st.builds(
    SlotInput,
    slot_id=st.just("x"),
    soc_pct=st.one_of(st.none(), st.floats(0, 100)),
    bms_limit_kw=st.floats(0, 120),
    charger_rating_kw=st.floats(0, 80),
    derate_factor=st.floats(0, 1),
    faulted=st.booleans(),
    docked_at_s=st.floats(0, 1e5),
    bidirectional=st.booleans(),
)


def _named(slots: list[SlotInput]) -> list[SlotInput]:
    return [
        SlotInput(
            slot_id=f"s{i}",
            soc_pct=s.soc_pct,
            bms_limit_kw=s.bms_limit_kw,
            charger_rating_kw=s.charger_rating_kw,
            derate_factor=s.derate_factor,
            faulted=s.faulted,
            docked_at_s=s.docked_at_s,
            bidirectional=s.bidirectional,
        )
        for i, s in enumerate(slots)
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    slots=st.lists(slot_st, min_size=0, max_size=24),
    policy=st.sampled_from(["naive", "smart"]),
    day_s=st.floats(0, 86_399),
    lease_kw=st.one_of(st.none(), st.floats(0, 900)),
    export_kw=st.one_of(st.none(), st.floats(0, 300)),
    queue=st.integers(0, 3),
)
def test_allocation_invariants(
    slots: list[SlotInput],
    policy: str,
    day_s: float,
    lease_kw: float | None,
    export_kw: float | None,
    queue: int,
) -> None:
    cfg = grid_config(bidirectional=True, max_export_kw=200)
    sched = Scheduler(cfg, make_policy(policy))
    slots = _named(slots)
    now = Instant(1000.0, day_s)
    if lease_kw is not None:
        sched.set_power_limit(lease_kw, 2000.0, now.t_s)
    if export_kw is not None:
        sched.request_export(export_kw, 2000.0, now.t_s)
    sched.set_queue(queue)
    alloc = sched.allocate(now, slots)
    limit = min(cfg.cap_kw, lease_kw) if lease_kw is not None else cfg.cap_kw
    assert alloc.limit_kw == pytest.approx(limit)
    charge = 0.0
    out = 0.0
    for s, g in zip(slots, alloc.grants, strict=True):
        assert g.slot_id == s.slot_id
        assert g.power_kw <= s.charge_limit_kw + 1e-9  # BMS, rating x derating
        assert g.power_kw <= max(0.0, min(s.bms_limit_kw, s.charger_rating_kw)) + 1e-9
        assert g.power_kw >= -s.export_limit_kw - 1e-9
        if not s.available:
            assert g.power_kw == 0.0  # no pack or faulted: nothing
        if g.power_kw > 0:
            charge += g.power_kw
        else:
            out -= g.power_kw
    assert charge <= limit + 1e-6  # the station limit, always
    assert out <= (min(export_kw, cfg.max_export_kw) if export_kw else 0.0) + 1e-6
    assert alloc.total_kw == pytest.approx(charge - out)
    if policy == "smart":
        ranked = sorted(
            (s for s in slots if s.available), key=lambda s: (-(s.soc_pct or 0.0), s.slot_id)
        )
        # Reserve kept: packs counted in the reserve never export ...
        for s in ranked[: alloc.reserve_packs]:
            assert alloc.power_kw(s.slot_id) >= 0.0
        # ... and while the reserve is short, the pack closest to ready charges at full rate
        # whatever the tariff, and nothing is exported.
        if alloc.ready_packs < alloc.reserve_packs:
            assert out == 0.0
            nonready = [s for s in ranked if not is_ready(s, cfg.ready_soc_pct)]
            if nonready:
                first = nonready[0]
                assert alloc.power_kw(first.slot_id) == pytest.approx(
                    min(first.charge_limit_kw, limit), abs=1e-6
                )


def _packs(socs: list[float], rating: float = 60.0) -> list[SlotInput]:
    return [
        SlotInput(f"s{i}", soc, 60.0, rating, docked_at_s=float(i)) for i, soc in enumerate(socs)
    ]


def test_naive_first_docked_first_served_under_the_cap() -> None:
    sched = Scheduler(grid_config(cap_kw=150), NaivePolicy())
    alloc = sched.allocate(Instant(0, 3600 * 9), _packs([20, 30, 40, 95]))
    assert [g.power_kw for g in alloc.grants] == [60, 60, 30, 0]
    assert alloc.grid_mode is GridMode.CHARGE
    assert alloc.tariff_period == "peak"


def test_smart_holds_at_peak_when_reserve_is_met_and_charges_in_the_valley() -> None:
    # Ten ready packs at 13:30 in a quiet hour: nothing to buy at the peak price.
    cfg = grid_config(swap_forecast_per_hour=[1] * 24)
    sched = Scheduler(cfg, SmartPolicy())
    packs = _packs([92] * 10 + [30])
    alloc = sched.allocate(Instant(0, 13.5 * 3600), packs)
    assert alloc.power_kw("s10") == 0.0
    assert alloc.grid_mode is GridMode.HOLD
    assert alloc.tariff_period == "peak"
    night = Scheduler(cfg, SmartPolicy()).allocate(Instant(0, 23 * 3600), packs)
    assert night.power_kw("s10") == 60.0  # valley: top everything up
    assert night.grid_mode is GridMode.CHARGE
    assert "cheapest tariff" in night.grid_reason


def test_full_packs_too_hot_to_hand_over_are_no_reserve() -> None:
    # The same peak hour, but the ten full packs are outside the swap's temperature window:
    # they cannot be given to a vehicle, so the reserve is not met and the rest charges.
    cfg = grid_config(swap_forecast_per_hour=[1] * 24)
    hot = [dataclasses.replace(p, handover_ok=False) for p in _packs([92] * 10)]
    packs = [*hot, _packs([92] * 10 + [30])[-1]]
    alloc = Scheduler(cfg, SmartPolicy()).allocate(Instant(0, 13.5 * 3600), packs)
    assert alloc.power_kw("s10") > 0.0
    cool = Scheduler(cfg, SmartPolicy()).allocate(Instant(0, 13.5 * 3600), _packs([92] * 10 + [30]))
    assert cool.power_kw("s10") == 0.0


def test_dispatch_lease_applies_at_once_and_reverts_when_it_ends() -> None:
    sched = Scheduler(grid_config(cap_kw=600, default_limit_kw=500), NaivePolicy())
    packs = _packs([10] * 12)
    a0 = sched.allocate(Instant(0.0, 0.0), packs)
    assert a0.limit_kw == 500 and a0.limit_source == "default"
    assert not sched.needs_reallocation(1.0)
    sched.set_power_limit(240, valid_until_s=60.0, now_t_s=2.0)
    assert sched.needs_reallocation(2.0)  # at once, not at the next period
    a1 = sched.allocate(Instant(2.0, 2.0), packs)
    assert a1.total_kw == pytest.approx(240) and a1.limit_source == "dispatch"
    assert "dispatch limit 240 kW" in a1.grid_reason
    assert "dispatch_limit" in a1.trigger
    # The lease end is itself a deadline, even between periods.
    sched.allocate(Instant(57.5, 57.5), packs)
    assert sched.next_due_s() == 60.0
    a2 = sched.allocate(Instant(60.0, 60.0), packs)
    assert a2.limit_kw == 500 and a2.total_kw == pytest.approx(500)
    assert "dispatch_limit_expired" in a2.trigger


def test_bad_requests_are_refused() -> None:
    sched = Scheduler(grid_config(), NaivePolicy())
    with pytest.raises(InvalidRequestError):
        sched.set_power_limit(-1, 100, 0)
    with pytest.raises(InvalidRequestError):
        sched.set_power_limit(100, 5, 10)  # already expired
    with pytest.raises(InvalidRequestError):
        sched.set_power_limit(math.nan, 100, 0)
    with pytest.raises(ExportNotSupportedError):
        sched.request_export(100, 100, 0)


def test_export_only_from_surplus_packs() -> None:
    cfg = grid_config(bidirectional=True, max_export_kw=300, swap_forecast_per_hour=[4] * 24)
    sched = Scheduler(cfg, SmartPolicy())
    packs = [
        SlotInput(f"s{i}", 95.0, 20.0, 60.0, docked_at_s=i, bidirectional=True) for i in range(8)
    ]
    sched.request_export(1000, 100.0, 0.0)
    a = sched.allocate(Instant(1.0, 16 * 3600), packs)
    exporting = [g for g in a.grants if g.power_kw < 0]
    assert a.grid_mode is GridMode.EXPORT
    assert len(exporting) == 8 - a.reserve_packs
    assert a.total_kw == pytest.approx(-60.0 * len(exporting))


def test_trigger_forces_reallocation_and_names_itself() -> None:
    sched = Scheduler(grid_config(), NaivePolicy())
    sched.allocate(Instant(0, 0), [])
    assert not sched.needs_reallocation(1.0)
    sched.trigger("pack_docked")
    assert sched.needs_reallocation(1.0)
    assert sched.allocate(Instant(1, 1), []).trigger == "pack_docked"
    assert not sched.needs_reallocation(5.9)
    assert sched.needs_reallocation(6.0)  # one period after the last allocation


def test_tariff_lookup_and_coverage() -> None:
    t = Tariff(grid_config().tariff)
    assert t.at(0).name == "valley" and t.at(23.5 * 3600).name == "valley"
    assert t.at(8 * 3600).name == "peak" and t.at(11 * 3600 - 1).name == "peak"
    assert t.at(11 * 3600).name == "flat"
    assert t.next_change_s(7 * 3600) == 3600
    assert t.peak_names == {"peak"}
    gap = {**TARIFF, "periods": TARIFF["periods"][:2]}  # type: ignore[index]
    with pytest.raises(ValidationError, match="does not cover 24 h: no period for 06:00-08:00"):
        grid_config(tariff=gap)


def test_forecast_is_corrected_by_arrivals_seen() -> None:
    f = SwapForecast([6] * 24, prior_swaps=2.0)
    assert f.factor(0.0, 0.0) == 1.0
    assert f.expected(0.0, 1800.0) == pytest.approx(3.0)
    # Twice the profile for three hours: the forecast rises.
    for i in range(36):
        f.observe(i * 300.0, i * 300.0, soc_pct=30.0)
    assert f.factor(3 * 3600.0, 3 * 3600.0) > 1.5
    assert f.arrival_soc_pct > 29.0
    # Nobody for three hours: it falls, but stays within its clip.
    assert f.factor(6 * 3600.0 + 1, 6 * 3600.0 + 1) == 0.5
    times = f.arrival_times(0.0, 3600.0, 1.0)
    assert times == pytest.approx([600.0 * k for k in range(1, 7)])
