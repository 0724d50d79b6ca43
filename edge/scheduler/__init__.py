"""The charging scheduler: a pure core (`core`, `policies`) and its live service (`service`).

Importing this package, `core`, `policies` or `service` never imports scipy, numpy or
matplotlib (the daemon's import path); `optimal` and `plot` do, inside their functions.
"""

from edge.scheduler.config import GridConfig
from edge.scheduler.core import (
    Allocation,
    Grant,
    GridMode,
    Instant,
    Scheduler,
    SlotInput,
)
from edge.scheduler.policies import make_policy

__all__ = [
    "Allocation",
    "Grant",
    "GridConfig",
    "GridMode",
    "Instant",
    "Scheduler",
    "SlotInput",
    "make_policy",
]
