"""A small in-process performance probe for benches (bench/station_load.py).

Off unless the environment names an output file: `SWAPD_PERF_OUT=PATH` for `swapd run`,
`SWAPD_SIM_STATS=PATH` for `swapd sim`. While on it records event-loop lag (a 25 ms timer
chain: how late each callback runs, by time.monotonic()), garbage-collector pauses (gc.callbacks) and whatever the
owner adds (`samples`, `counts`, `extra`). On SIGUSR1 and at exit it writes one JSON document
to PATH (atomically, with a growing `seq`) and starts a new window, so a bench can read the
figures of exactly the window it measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

PERF_ENV = "SWAPD_PERF_OUT"
SIM_STATS_ENV = "SWAPD_SIM_STATS"


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(xs: list[float]) -> dict[str, float]:
    """p50/p99/max and the count (figures in the unit of the samples)."""
    return {
        "n": len(xs),
        "p50": round(quantile(xs, 0.5), 3),
        "p99": round(quantile(xs, 0.99), 3),
        "max": round(max(xs), 3) if xs else 0.0,
    }


class PerfProbe:
    """Loop lag and GC pauses of this process, plus named samples and counters."""

    def __init__(self, path: Path, *, tick_s: float = 0.025) -> None:
        self.path = path
        self.tick_s = tick_s
        self.seq = 0
        self.samples: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.extra: list[Callable[[], dict[str, Any]]] = []
        self.resets: list[Callable[[], None]] = []
        self._lag_ms: list[float] = []
        self._gc_ms: list[float] = []
        self._gc_by_gen = [0.0, 0.0, 0.0]
        self._gc_t0 = 0.0
        self._window_t0 = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @classmethod
    def from_env(cls, var: str) -> PerfProbe | None:
        p = os.environ.get(var)
        return cls(Path(p)) if p else None

    # ---- recording ---------------------------------------------------------------------
    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_t0) * 1000
        self._gc_ms.append(ms)
        gen = info.get("generation", 0)
        if 0 <= gen <= 2:
            self._gc_by_gen[gen] = max(self._gc_by_gen[gen], ms)

    def _tick(self) -> None:
        # time.monotonic(), not loop.time(): uvloop's loop time is cached per iteration (and in
        # whole ms), which would hide the lateness of callbacks run late in an iteration.
        now = time.monotonic()
        self._lag_ms.append(max(0.0, now - self._due) * 1000)
        self._due = now + self.tick_s
        self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Call from inside the running loop."""
        loop = asyncio.get_running_loop()
        gc.callbacks.append(self._gc)
        self._due = time.monotonic() + self.tick_s
        self._handle = loop.call_later(self.tick_s, self._tick)
        loop.add_signal_handler(signal.SIGUSR1, self.dump)
        self._window_t0 = time.monotonic()

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc)
        if self._handle is not None:
            self._handle.cancel()
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        self.dump()

    def snapshot(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "pid": os.getpid(),
            "window_s": round(time.monotonic() - self._window_t0, 3),
            "loop_lag_ms": summary(self._lag_ms),
            "gc_pause_ms": summary(self._gc_ms),
            "gc_pause_max_ms_by_gen": [round(x, 3) for x in self._gc_by_gen],
            "gc_counts": [s["collections"] for s in gc.get_stats()],
            "gc_threshold": list(gc.get_threshold()),
            "gc_frozen": gc.get_freeze_count(),
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "samples": {k: summary(v) for k, v in self.samples.items()},
            "counts": dict(self.counts),
        }
        for f in self.extra:
            doc.update(f())
        return doc

    def dump(self) -> None:
        """Write this window's figures and start a new window."""
        self.seq += 1
        doc = self.snapshot()
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        tmp.replace(self.path)
        self._lag_ms = []
        self._gc_ms = []
        self._gc_by_gen = [0.0, 0.0, 0.0]
        for v in self.samples.values():
            v.clear()
        self.counts = dict.fromkeys(self.counts, 0)
        for r in self.resets:
            r()
        self._window_t0 = time.monotonic()


def watch_modbus(probe: PerfProbe, devices: dict[str, Any]) -> None:
    """Record every online cycle's duration (request start to snapshot) of each device owner,
    and the owners' offline/overrun counters. Wraps the owner's publish step: no extra task."""
    from drivers.modbus.device import DeviceState

    for dev in devices.values():
        orig = dev._publish

        def publish(fresh: frozenset[str], _orig: Any = orig, _dev: Any = dev) -> None:
            _orig(fresh)
            snap = _dev.snapshot()
            if snap.state is DeviceState.ONLINE:
                probe.add("modbus_cycle_ms", snap.cycle_s * 1000)

        setattr(dev, "_publish", publish)  # noqa: B010 - an instance attribute, on purpose

    def counters() -> dict[str, Any]:
        return {
            "modbus": {
                k: sum(getattr(d.counters, k) for d in devices.values())
                for k in ("cycles", "offline_events", "overruns", "timeouts", "requests")
            }
        }

    probe.extra.append(counters)
