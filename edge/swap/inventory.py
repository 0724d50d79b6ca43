"""Where every pack is. Pure: the journal persists it, the sequence changes it.

Places: `slot:<id>`, `vehicle`, `shuttle`, `buffer`, `stacker`. Every pack has exactly one place
(a dict keyed by pack id) and every place holds at most one pack (checked on every change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HANDLING_PLACES = ("vehicle", "shuttle", "buffer", "stacker")


class InventoryError(ValueError):
    """A change would break an invariant, or a move does not match where packs are."""


def slot_place(slot_id: str) -> str:
    return f"slot:{slot_id}"


def is_valid_place(place: str, slots: frozenset[str]) -> bool:
    if place in HANDLING_PLACES:
        return True
    return place.startswith("slot:") and place[5:] in slots


@dataclass(frozen=True, slots=True)
class PackRecord:
    pack_id: str
    pack_type: str
    place: str


class Inventory:
    __slots__ = ("_packs", "slots")

    def __init__(self, slots: frozenset[str]) -> None:
        self.slots = slots
        self._packs: dict[str, PackRecord] = {}

    # ----- queries

    def packs(self) -> list[PackRecord]:
        return sorted(self._packs.values(), key=lambda p: (p.place, p.pack_id))

    def get(self, pack_id: str) -> PackRecord | None:
        return self._packs.get(pack_id)

    def at(self, place: str) -> PackRecord | None:
        for p in self._packs.values():
            if p.place == place:
                return p
        return None

    def problems(self) -> list[str]:
        """Invariant violations (empty when consistent)."""
        out: list[str] = []
        seen: dict[str, str] = {}
        for p in self._packs.values():
            if not is_valid_place(p.place, self.slots):
                out.append(f"pack {p.pack_id} at unknown place {p.place!r}")
            if p.place in seen:
                out.append(f"place {p.place} holds {seen[p.place]} and {p.pack_id}")
            seen[p.place] = p.pack_id
        return out

    # ----- changes (each validated; a failed change leaves the inventory untouched)

    def _checked(self, new: dict[str, PackRecord]) -> None:
        old = self._packs
        self._packs = new
        problems = self.problems()
        if problems:
            self._packs = old
            raise InventoryError("; ".join(problems))

    def add(self, pack_id: str, pack_type: str, place: str) -> None:
        if pack_id in self._packs:
            raise InventoryError(f"pack {pack_id} already at {self._packs[pack_id].place}")
        self._checked({**self._packs, pack_id: PackRecord(pack_id, pack_type, place)})

    def remove(self, pack_id: str) -> PackRecord:
        if pack_id not in self._packs:
            raise InventoryError(f"pack {pack_id} not in the station")
        rec = self._packs[pack_id]
        self._packs = {k: v for k, v in self._packs.items() if k != pack_id}
        return rec

    def move(self, pack_id: str, source: str, target: str) -> None:
        """Move a pack; `target` "away" means it leaves the station."""
        rec = self._packs.get(pack_id)
        if rec is None or rec.place != source:
            where = rec.place if rec else "nowhere"
            raise InventoryError(f"pack {pack_id} expected at {source}, inventory has {where}")
        if target == "away":
            self.remove(pack_id)
            return
        occupant = self.at(target)
        if occupant is not None and occupant.pack_id != pack_id:
            raise InventoryError(f"{target} already holds {occupant.pack_id}")
        self._checked({**self._packs, pack_id: PackRecord(pack_id, rec.pack_type, target)})

    def relabel(self, place: str, pack_id: str, pack_type: str) -> str | None:
        """The pack at `place` says it is `pack_id`: record that. Returns the old id."""
        rec = self.at(place)
        new = {k: v for k, v in self._packs.items() if rec is None or k != rec.pack_id}
        if pack_id in new:
            raise InventoryError(f"pack {pack_id} already recorded at {new[pack_id].place}")
        new[pack_id] = PackRecord(pack_id, pack_type, place)
        self._checked(new)
        return rec.pack_id if rec else None

    def set_place(self, pack_id: str, place: str | None, pack_type: str | None) -> None:
        """Operator correction: put `pack_id` at `place` (None: not in the station)."""
        rec = self._packs.get(pack_id)
        new = {k: v for k, v in self._packs.items() if k != pack_id}
        if place is not None:
            ptype = pack_type or (rec.pack_type if rec else "")
            if not ptype:
                raise InventoryError(f"pack {pack_id} is new: give its type")
            new[pack_id] = PackRecord(pack_id, ptype, place)
        self._checked(new)

    # ----- persistence

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"pack_id": p.pack_id, "pack_type": p.pack_type, "place": p.place} for p in self.packs()
        ]

    @classmethod
    def from_json(cls, slots: frozenset[str], data: list[dict[str, Any]]) -> Inventory:
        inv = cls(slots)
        for d in data:
            inv._packs[str(d["pack_id"])] = PackRecord(
                str(d["pack_id"]), str(d["pack_type"]), str(d["place"])
            )
        return inv
