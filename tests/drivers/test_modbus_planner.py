"""Block planner and the device owner's pure policies (timeout, backoff, offline)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.core.backoff import Backoff
from drivers.modbus import plan_blocks, plan_map
from drivers.modbus.policy import AdaptiveTimeout, OfflineDetector
from drivers.modbus.regmap import Barrier, PointSpec


def pts(
    *specs: tuple[str, int, str] | tuple[str, int, str, str],
) -> list[tuple[str, PointSpec, Any]]:
    out = []
    for i, s in enumerate(specs):
        table, address, kind = s[0], s[1], s[2]
        group = s[3] if len(s) > 3 else "fast"
        out.append(
            (f"p{i}", PointSpec(table=table, address=address, type=kind, group=group), "big")
        )  # type: ignore[arg-type]
    return out


def spans(blocks: list[Any]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_adjacent_points_become_one_read() -> None:
    blocks = plan_blocks(pts(("input", 0, "u16"), ("input", 1, "f32"), ("input", 3, "i16")))
    assert spans(blocks) == [("input", 0, 4)]
    assert [i.offset for i in blocks[0].items] == [0, 1, 3]


def test_gap_bridged_up_to_the_limit_only() -> None:
    p = pts(("holding", 0, "u16"), ("holding", 32, "u16"), ("holding", 70, "u16"))
    assert spans(plan_blocks(p, max_gap=31)) == [("holding", 0, 33), ("holding", 70, 1)]
    assert spans(plan_blocks(p, max_gap=7)) == [
        ("holding", 0, 1),
        ("holding", 32, 1),
        ("holding", 70, 1),
    ]
    assert spans(plan_blocks(p, max_gap=37)) == [("holding", 0, 71)]


def test_never_more_than_125_registers_or_2000_bits() -> None:
    p = pts(*[("holding", a, "u32") for a in range(0, 300, 2)])
    blocks = plan_blocks(p, max_gap=0)
    assert [b.count for b in blocks] == [124, 124, 52]  # a u32 is never split
    bits = plan_blocks(pts(*[("coil", a, "bool") for a in range(4500)]))
    assert [b.count for b in bits] == [2000, 2000, 500]


def test_tables_groups_and_barriers_are_never_mixed() -> None:
    p = pts(
        ("input", 0, "u16"),
        ("holding", 1, "u16"),
        ("input", 2, "u16", "slow"),
        ("input", 10, "u16"),
        ("input", 20, "u16"),
    )
    blocks = plan_blocks(p, barriers=[Barrier(table="input", address=11)])
    assert sorted((b.group, *s) for b, s in zip(blocks, spans(blocks), strict=True)) == [
        ("fast", "holding", 1, 1),
        ("fast", "input", 0, 11),
        ("fast", "input", 20, 1),
        ("slow", "input", 2, 1),
    ]


@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=80, unique=True),
    st.integers(0, 40),
    st.lists(st.integers(1, 400), max_size=4),
)
def test_plan_covers_every_point_within_the_rules(
    addresses: list[int], gap: int, walls: list[int]
) -> None:
    p = pts(*[("holding", a, "u16") for a in addresses])
    barriers = [Barrier(table="holding", address=w) for w in walls]
    blocks = plan_blocks(p, max_gap=gap, barriers=barriers)
    covered = sorted(i.spec.address for b in blocks for i in b.items)
    assert covered == sorted(addresses)
    for b in blocks:
        assert b.count <= 125
        assert not any(b.start < w <= b.end for w in walls)
        addrs = sorted(i.spec.address for i in b.items)
        assert all(y - x - 1 <= gap for x, y in zip(addrs, addrs[1:], strict=False))
    # fewest reads: no two neighbouring blocks could have been one
    blocks.sort(key=lambda b: b.start)
    for a, b in zip(blocks, blocks[1:], strict=False):
        mergeable = b.start - a.end - 1 <= gap and b.end - a.start + 1 <= 125
        assert not mergeable or any(a.end < w <= b.start for w in walls)


def test_shipped_maps_need_one_read_per_fast_cycle() -> None:
    from drivers.modbus import load_register_map
    from tests.drivers.modbus_fixtures import MAPS

    for path in MAPS.values():
        plan = plan_map(load_register_map(path))
        assert len(plan["fast"]) == 1


def test_adaptive_timeout_follows_latency_within_bounds() -> None:
    t = AdaptiveTimeout(0.2, 0.4)
    assert t.timeout_s == 0.2
    t.observe(0.001)
    assert t.timeout_s == 0.2  # floor
    t.observe(0.08)
    assert t.timeout_s == pytest.approx(0.32)  # 4 x latency, at once
    t.observe(0.2)
    assert t.timeout_s == 0.4  # ceiling
    for _ in range(50):
        t.observe(0.001)
    assert t.timeout_s == 0.2  # decays back


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(0.5, 10.0)
    assert [b.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_offline_after_n_cycles_without_answer() -> None:
    d = OfflineDetector(3)
    assert [d.cycle(False), d.cycle(False), d.cycle(True), d.cycle(False), d.cycle(False)] == [
        False
    ] * 5
    assert d.cycle(False) is True
