"""What the simulated packs receive, for the station load bench (bench/station_load.py).

`swapd sim` with SWAPD_SIM_STATS=PATH records, per rack slot, the arrival time of every CCS
frame (periods between consecutive CCS of one session), CST and CEM frames, and the BMS-side
timeouts (BEM) of each pack; the figures go into the sim's perf dump (edge.app.perf). A CST
counts as `cst_swap` when the pack leaves its seat afterwards (the swap stopped it),
`cst_done` when it answers the pack's own BST or reports a reached condition, else as `cst`
(a charger-side stop nobody asked for: a false trip). Repeats of one CST/CEM within 2 s count
once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.can.codec import CanFrame, default_codec
from edge.app.perf import summary

CCS_PERIOD_MS = 50.0
REPEAT_S = 2.0
# A manual CST the swap did not follow by taking the pack within this time is a false stop.
SWAP_GRACE_S = 120.0


@dataclass(slots=True)
class _Seat:
    last_ccs: float | None = None
    last_cst: float = -1e9
    last_cem: float = -1e9
    manual_cst_at: float | None = None
    periods_ms: list[float] = field(default_factory=list)


class FrameStats:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        codec = default_codec()
        self._ccs = codec.frame_id("CCS")
        self._cst = codec.frame_id("CST")
        self._cem = codec.frame_id("CEM")
        self._new_session = {codec.frame_id("CHM"), codec.frame_id("CRM")}
        self._clock = clock
        self.seats: dict[str, _Seat] = {}
        self.counts: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}
        self._live_timeouts: dict[str, Callable[[], list[str]]] = {}
        self._timeouts_at_reset: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def wrap(self, slot_id: str, handler: Callable[[CanFrame], None]) -> Callable[[CanFrame], None]:
        seat = self.seats.setdefault(slot_id, _Seat())
        seat.last_ccs = None

        def on_frame(frame: CanFrame) -> None:
            fid = frame.arbitration_id
            if fid == self._ccs:
                now = self._clock()
                if seat.last_ccs is not None:
                    seat.periods_ms.append((now - seat.last_ccs) * 1000)
                seat.last_ccs = now
            elif fid == self._cst:
                self._on_cst(seat, frame.data)
            elif fid == self._cem:
                now = self._clock()
                if now - seat.last_cem > REPEAT_S:
                    self._count("cem")
                seat.last_cem = now
            elif fid in self._new_session:
                seat.last_ccs = None
            handler(frame)

        return on_frame

    def _on_cst(self, seat: _Seat, data: bytes) -> None:
        now = self._clock()
        seat.last_ccs = None
        first = now - seat.last_cst > REPEAT_S
        seat.last_cst = now
        if not first or not data:
            return
        b = data[0]
        fields = [(b >> s) & 3 for s in (0, 2, 4, 6)]  # condition, manual, fault, bms stopped
        faults = any(((x >> s) & 3) == 1 for x in data[1:4] for s in (0, 2, 4, 6))
        if fields[2] == 1 or faults:
            self._count("cst")
        elif fields[1] == 1:
            seat.manual_cst_at = now  # a swap, if the pack leaves soon
        else:
            self._count("cst_done")

    def seated(self, slot_id: str, timeouts: Callable[[], list[str]]) -> None:
        """A pack was seated: its BMS's timeout list is read at each snapshot."""
        self._live_timeouts[slot_id] = timeouts
        self._timeouts_at_reset.pop(slot_id, None)

    def unseated(self, slot_id: str) -> None:
        seat = self.seats.get(slot_id)
        if seat is not None:
            seat.last_ccs = None
            if seat.manual_cst_at is not None:
                self._count("cst_swap")
                seat.manual_cst_at = None
        got = self._live_timeouts.pop(slot_id, None)
        if got is not None:
            for name in got()[self._timeouts_at_reset.pop(slot_id, 0) :]:
                self.timeouts[name] = self.timeouts.get(name, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        periods = [p for s in self.seats.values() for p in s.periods_ms]
        jitter = [abs(p - CCS_PERIOD_MS) for p in periods]
        counts = dict(self.counts)
        stale = sum(
            1
            for s in self.seats.values()
            if s.manual_cst_at is not None and now - s.manual_cst_at > SWAP_GRACE_S
        )
        counts["cst"] = counts.get("cst", 0) + stale
        timeouts = dict(self.timeouts)
        for slot_id, got in self._live_timeouts.items():
            for name in got()[self._timeouts_at_reset.get(slot_id, 0) :]:
                timeouts[name] = timeouts.get(name, 0) + 1
        per_slot_p99 = {
            k: round(summary(v.periods_ms)["p99"], 2) for k, v in self.seats.items() if v.periods_ms
        }
        return {
            "ccs_period_ms": summary(periods),
            "ccs_jitter_ms": summary(jitter),
            "ccs_period_p99_by_slot": per_slot_p99,
            "frames": counts,
            "bms_timeouts": timeouts,
        }

    def reset(self) -> None:
        for s in self.seats.values():
            s.periods_ms = []
        self.counts = {}
        self.timeouts = {}
        self._timeouts_at_reset = {k: len(f()) for k, f in self._live_timeouts.items()}
