"""Where every pack is. Pure: the journal persists it, the sequence changes it.

A place is a rack slot (by its station slot id; `slot:<id>` in files and commands) or a handling
place of the robot. Every pack has exactly one place (a dict keyed by pack id) and every place
holds at most one pack (checked on every change).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, TypeAdapter


class Handling(StrEnum):
    """The robot's places between the vehicle and the rack."""

    VEHICLE = "vehicle"
    SHUTTLE = "shuttle"
    BUFFER = "buffer"
    STACKER = "stacker"


HANDLING_PLACES = tuple(h.value for h in Handling)


@dataclass(frozen=True, slots=True, order=True)
class SlotPlace:
    """A rack slot, by the station's slot id (not the PLC's slot number)."""

    slot_id: str

    def __str__(self) -> str:
        return f"slot:{self.slot_id}"


Place = Handling | SlotPlace
_SLOT_PREFIX = "slot:"


class InventoryError(ValueError):
    """A change would break an invariant, or a move does not match where packs are."""


def parse_place(text: str) -> Place:
    """`slot:<id>` or a handling place; ValueError for anything else."""
    if text.startswith(_SLOT_PREFIX) and len(text) > len(_SLOT_PREFIX):
        return SlotPlace(text[len(_SLOT_PREFIX) :])
    try:
        return Handling(text)
    except ValueError:
        raise ValueError(
            f"unknown place {text!r} ({_SLOT_PREFIX}<id>, {', '.join(HANDLING_PLACES)})"
        ) from None


def _place_value(value: object) -> Place:
    if isinstance(value, Handling | SlotPlace):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a place is a string, not {value!r}")
    return parse_place(value)


# A place in files and on the wire: its text form (`slot:<id>`, `vehicle`, ...).
PlaceText = Annotated[Place, PlainValidator(_place_value), PlainSerializer(str, return_type=str)]


def is_valid_place(place: Place, slots: frozenset[str]) -> bool:
    return not isinstance(place, SlotPlace) or place.slot_id in slots


@dataclass(frozen=True, slots=True)
class PackRecord:
    pack_id: str
    pack_type: str
    place: PlaceText


class Inventory:
    __slots__ = ("_packs", "slots")

    def __init__(self, slots: frozenset[str]) -> None:
        self.slots = slots
        self._packs: dict[str, PackRecord] = {}

    # ----- queries

    def packs(self) -> list[PackRecord]:
        return sorted(self._packs.values(), key=lambda p: (str(p.place), p.pack_id))

    def get(self, pack_id: str) -> PackRecord | None:
        return self._packs.get(pack_id)

    def at(self, place: Place) -> PackRecord | None:
        for p in self._packs.values():
            if p.place == place:
                return p
        return None

    def problems(self) -> list[str]:
        """Invariant violations (empty when consistent)."""
        out: list[str] = []
        seen: dict[Place, str] = {}
        for p in self._packs.values():
            if not is_valid_place(p.place, self.slots):
                out.append(f"pack {p.pack_id} at unknown place {str(p.place)!r}")
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

    def add(self, pack_id: str, pack_type: str, place: Place) -> None:
        if pack_id in self._packs:
            raise InventoryError(f"pack {pack_id} already at {self._packs[pack_id].place}")
        self._checked({**self._packs, pack_id: PackRecord(pack_id, pack_type, place)})

    def remove(self, pack_id: str) -> PackRecord:
        if pack_id not in self._packs:
            raise InventoryError(f"pack {pack_id} not in the station")
        rec = self._packs[pack_id]
        self._packs = {k: v for k, v in self._packs.items() if k != pack_id}
        return rec

    def move(self, pack_id: str, source: Place, target: Place | None) -> None:
        """Move a pack; `target` None means it leaves the station."""
        rec = self._packs.get(pack_id)
        if rec is None or rec.place != source:
            where = rec.place if rec else "nowhere"
            raise InventoryError(f"pack {pack_id} expected at {source}, inventory has {where}")
        if target is None:
            self.remove(pack_id)
            return
        occupant = self.at(target)
        if occupant is not None and occupant.pack_id != pack_id:
            raise InventoryError(f"{target} already holds {occupant.pack_id}")
        self._checked({**self._packs, pack_id: PackRecord(pack_id, rec.pack_type, target)})

    def relabel(self, place: Place, pack_id: str, pack_type: str) -> str | None:
        """The pack at `place` says it is `pack_id`: record that. Returns the old id."""
        rec = self.at(place)
        new = {k: v for k, v in self._packs.items() if rec is None or k != rec.pack_id}
        if pack_id in new:
            raise InventoryError(f"pack {pack_id} already recorded at {new[pack_id].place}")
        new[pack_id] = PackRecord(pack_id, pack_type, place)
        self._checked(new)
        return rec.pack_id if rec else None

    def set_place(self, pack_id: str, place: Place | None, pack_type: str | None) -> None:
        """Operator correction: put `pack_id` at `place` (None: not in the station)."""
        rec = self._packs.get(pack_id)
        new = {k: v for k, v in self._packs.items() if k != pack_id}
        if place is not None:
            ptype = pack_type or (rec.pack_type if rec else "")
            if not ptype:
                raise InventoryError(f"pack {pack_id} is new: give its type")
            new[pack_id] = PackRecord(pack_id, ptype, place)
        self._checked(new)

    # ----- persistence (the records' own file form: {pack_id, pack_type, place})

    def to_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = _RECORDS.dump_python(self.packs(), mode="json")
        return out

    @classmethod
    def from_json(cls, slots: frozenset[str], data: object) -> Inventory:
        return cls.of(slots, _RECORDS.validate_python(data))

    @classmethod
    def of(cls, slots: frozenset[str], records: list[PackRecord]) -> Inventory:
        """As recorded (a file may break the invariants: `problems()` reports it)."""
        inv = cls(slots)
        inv._packs = {r.pack_id: r for r in records}
        return inv


_RECORDS = TypeAdapter(list[PackRecord])
