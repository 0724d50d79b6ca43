"""Process-level tuning of `swapd run`: the event loop and the garbage collector.

- uvloop, when installed (a daemon dependency on Linux), runs the event loop: its callbacks,
  timers and socket I/O cost less CPU than asyncio's pure-Python loop. SWAPD_EVENT_LOOP=asyncio
  forces the standard loop (uvloop missing: the standard loop, silently).
- After start-up, `gc.freeze()` moves everything built so far (modules, config, the station's
  object graph) out of the collector's reach, and raised thresholds make collections rarer:
  a full collection then walks only what was allocated since, so it no longer pauses the loop
  for tens of ms. SWAPD_GC_TUNE=0 keeps Python's defaults.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable

# gen0 every 7000 net allocations (default 700); gen1 every 20 gen0, gen2 every 100 gen1.
GC_THRESHOLDS = (7000, 20, 100)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("SWAPD_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def tune_gc() -> bool:
    """Freeze the start-up heap and raise the thresholds (unless SWAPD_GC_TUNE=0)."""
    if os.environ.get("SWAPD_GC_TUNE", "1") == "0":
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True
