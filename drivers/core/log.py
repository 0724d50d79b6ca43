"""The one logger helper: every line carries `component`. The daemon's formatting and rate
limits are configured once, in edge.app.logs; drivers only name their component."""

from __future__ import annotations

from typing import Any

import structlog


def get_logger(component: str, **bound: Any) -> Any:
    # Initial values stay lazy: module-level loggers made before configuration still follow it.
    return structlog.get_logger(component=component, **bound)
