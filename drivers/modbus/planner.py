"""Block planner: a map's points merged into the fewest reads. Pure.

Rules: one table and one poll group per block; at most 125 registers (2000 bits for coils and
discretes) per read, the Modbus PDU limits; a gap of unused addresses is bridged only up to
`max_gap` (registers; bits use 16 x max_gap), since devices may refuse or be slow on undefined
addresses; never across a declared barrier. Greedy left-to-right packing over points sorted by
address is optimal here: every block is a run of consecutive points, and taking the longest
feasible run first never needs more blocks than any other split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.modbus.regmap import BIT_TABLES, Barrier, PointSpec, RegisterMap, Table, WordOrder

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
DEFAULT_MAX_GAP_TCP = 31
DEFAULT_MAX_GAP_RTU = 7


@dataclass(frozen=True, slots=True)
class BlockItem:
    name: str
    spec: PointSpec
    offset: int  # registers (or bits) from the block start
    order: WordOrder
    words: int  # registers the point spans; 0 for a coil/discrete bit


@dataclass(frozen=True, slots=True)
class Block:
    table: Table
    start: int
    count: int  # registers, or bits for coil/discrete
    group: str
    items: tuple[BlockItem, ...]

    @property
    def end(self) -> int:
        return self.start + self.count - 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.items)


def _words(p: PointSpec) -> int:
    return 0 if p.table in BIT_TABLES else p.words


def _length(p: PointSpec) -> int:
    return 1 if p.table in BIT_TABLES else p.words


def plan_blocks(
    points: Iterable[tuple[str, PointSpec, WordOrder]],
    *,
    barriers: Sequence[Barrier] = (),
    max_gap: int = DEFAULT_MAX_GAP_TCP,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[Block]:
    """Blocks covering `points`, ordered by (group, table, start)."""
    if (
        max_gap < 0
        or not 1 <= max_registers <= MAX_READ_REGISTERS
        or not 1 <= max_bits <= MAX_READ_BITS
    ):
        raise ValueError("max_gap >= 0, 1 <= max_registers <= 125, 1 <= max_bits <= 2000")
    by_key: dict[tuple[str, str], list[tuple[str, PointSpec, WordOrder]]] = {}
    for name, spec, order in points:
        by_key.setdefault((spec.group, spec.table), []).append((name, spec, order))
    blocks: list[Block] = []
    for (group, table), items in sorted(by_key.items()):
        bits = table in BIT_TABLES
        limit = max_bits if bits else max_registers
        gap = max_gap * 16 if bits else max_gap
        walls = sorted(b.address for b in barriers if b.table == table)
        items.sort(key=lambda t: t[1].address)
        runs: list[list[tuple[str, PointSpec, WordOrder]]] = []
        end = -1
        for name, spec, order in items:
            p_start, p_end = spec.address, spec.address + _length(spec) - 1
            if runs:
                start = runs[-1][0][1].address
                crosses = any(end < w <= p_start for w in walls)
                fits = p_start - end - 1 <= gap and max(end, p_end) - start + 1 <= limit
                if fits and not crosses:
                    runs[-1].append((name, spec, order))
                    end = max(end, p_end)
                    continue
            runs.append([(name, spec, order)])
            end = p_end
        for run in runs:
            start = run[0][1].address
            stop = max(s.address + _length(s) for _, s, _ in run)
            items_t = tuple(BlockItem(n, s, s.address - start, o, _words(s)) for n, s, o in run)
            blocks.append(Block(run[0][1].table, start, stop - start, group, items_t))
    return blocks


def plan_map(
    m: RegisterMap,
    *,
    max_gap: int = DEFAULT_MAX_GAP_TCP,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> dict[str, list[Block]]:
    """Blocks of every polled point of the map, by poll group (every group of the map has an
    entry). Write-only points are never read: devices answer such reads with an exception."""
    blocks = plan_blocks(
        ((n, p, m.word_order_of(p)) for n, p in m.points.items() if p.polled),
        barriers=m.barriers,
        max_gap=max_gap,
        max_registers=max_registers,
        max_bits=max_bits,
    )
    out: dict[str, list[Block]] = {g: [] for g in m.poll_groups}
    for b in blocks:
        out[b.group].append(b)
    return out


def point_block(name: str, spec: PointSpec, order: WordOrder) -> Block:
    """The one-point block used to read a point back after writing it."""
    return Block(
        spec.table,
        spec.address,
        _length(spec),
        spec.group,
        (BlockItem(name, spec, 0, order, _words(spec)),),
    )


def readback_block(name: str, spec: PointSpec, order: WordOrder) -> Block | None:
    """The block that confirms a write of this point: the point itself, or for a write-only
    point its declared read-back address; None when the device offers no way to read it back."""
    if spec.access != "w":
        return point_block(name, spec, order)
    if spec.readback is None:
        return None
    rb = spec.readback
    return Block(
        rb.table,
        rb.address,
        _length(spec),
        spec.group,
        (BlockItem(name, spec, 0, order, _words(spec)),),
    )
