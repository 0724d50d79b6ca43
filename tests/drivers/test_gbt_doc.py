"""docs/gbt27930.md matches the code: every DBC signal's place, width, scale, offset and unit,
every message's identifier and length, and every session and TP timer's default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from drivers.can.codec import default_codec, pgn_of
from drivers.can.j1939 import TpTimers
from drivers.can.session import SessionTimers

DOC = Path(__file__).resolve().parents[2] / "docs" / "gbt27930.md"
HEADER = re.compile(r"^### (\w+), (?:0x([0-9A-F]{8})|PGN 0x([0-9A-F]{4})), (\d+) bytes?")
SIGNAL = re.compile(r"^\| (\d+)\.(\d) \| (\d+) \| `(\w+)` \| (-?[\d.]+) \| (-?[\d.]+) \|([^|]*)\|")
TIMER = re.compile(r"^\| `(\w+)` \| ([\d.]+) \|")


def doc_sections() -> dict[str, tuple[int | None, int | None, int, list[re.Match[str]]]]:
    sections: dict[str, tuple[int | None, int | None, int, list[re.Match[str]]]] = {}
    current: list[re.Match[str]] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if h := HEADER.match(line):
            current = []
            frame_id = int(h.group(2), 16) if h.group(2) else None
            pgn = int(h.group(3), 16) if h.group(3) else None
            sections[h.group(1)] = (frame_id, pgn, int(h.group(4)), current)
        elif line.startswith("## "):
            current = None
        elif current is not None and (m := SIGNAL.match(line)):
            current.append(m)
    return sections


def test_every_dbc_message_and_signal_is_documented_as_the_dbc_has_it() -> None:
    db = default_codec().db
    sections = doc_sections()
    assert {m.name for m in db.messages} <= set(sections), "messages missing from the page"
    for msg in db.messages:
        frame_id, pgn, length, rows = sections[msg.name]
        if frame_id is not None:
            assert frame_id == msg.frame_id & 0x1FFFFFFF, msg.name
        else:
            assert pgn == pgn_of(msg.frame_id), msg.name
        assert length == msg.length, msg.name
        documented = {r.group(4): r for r in rows}
        assert len(documented) == len(rows), f"{msg.name}: a signal listed twice"
        assert set(documented) == {s.name for s in msg.signals}, msg.name
        for s in msg.signals:
            r = documented[s.name]
            assert int(r.group(1)) * 8 + int(r.group(2)) == s.start, s.name
            assert int(r.group(3)) == s.length, s.name
            assert float(r.group(5)) == s.scale, s.name
            assert float(r.group(6)) == s.offset, s.name
            assert r.group(7).strip() == (s.unit or ""), s.name


def test_every_timer_default_is_documented_with_its_value() -> None:
    rows = {
        m.group(1): float(m.group(2))
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if (m := TIMER.match(line))
    }
    defaults = {
        f.name: float(getattr(t, f.name))
        for t in (SessionTimers(), TpTimers())
        for f in dataclasses.fields(t)
    }
    assert rows == defaults
