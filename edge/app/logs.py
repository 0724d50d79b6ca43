"""structlog set-up: JSON lines off a terminal (journald), readable console on one.

Every line names its component. Repeated identical warnings and errors are rate-limited: one
offline device must not flood the disk. The first occurrence is logged, the repeats within the
window are counted, and the next line after the window says how many were suppressed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_RATE_LIMITED_LEVELS = {"warning", "error", "critical"}


class RateLimiter:
    """structlog processor: identical (component, event, level) lines at most once per window."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 1024) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._seen: dict[tuple[Any, ...], tuple[float, int]] = {}

    def admit(self, key: tuple[Any, ...]) -> int | None:
        """None when the line is to be dropped, else how many repeats were suppressed before it."""
        now = time.monotonic()
        first, suppressed = self._seen.get(key, (None, 0))
        if first is not None and now - first < self.window_s:
            self._seen[key] = (first, suppressed + 1)
            return None
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return suppressed

    def __call__(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if method not in _RATE_LIMITED_LEVELS:
            return event
        key = (
            event.get("component"),
            event.get("event"),
            method,
            event.get("device"),
            event.get("slot"),
        )
        suppressed = self.admit(key)
        if suppressed is None:
            raise structlog.DropEvent
        if suppressed:
            event["suppressed_repeats"] = suppressed
        return event


class _StdlibRateLimit(logging.Filter):
    """The same limit for library and stdlib log records (a filter: formatters cannot drop)."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self._limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        return self._limiter.admit((record.name, record.msg, record.levelno)) is not None


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class LossyStream:
    """The log's stream, which a failing write cannot turn into a crash: a full disk under a
    log file (EFBIG, ENOSPC) or a closed pipe drops the line and counts it, and the next line
    that goes through says how many were lost. Without it, one `log.warning` in a service's
    error path raised out of that service (seen in the fault campaign's full-disk fault)."""

    def __init__(self, out: TextIO) -> None:
        self.inner = out
        self.lost = 0

    def isatty(self) -> bool:
        return self.inner.isatty()

    def write(self, text: str) -> int:
        try:
            if self.lost:
                note = orjson.dumps({"event": "log lines lost", "lost": self.lost}).decode()
                self.inner.write(note + "\n")
                self.lost = 0
            return self.inner.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.lost += text.count("\n")  # print() writes the line, then its newline
            return len(text)

    def flush(self) -> None:
        try:
            self.inner.flush()
        except (OSError, ValueError):
            pass


def configure_logging(
    level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    out: Any = LossyStream(stream or sys.stderr)
    use_json = (not out.isatty()) if json is None else json
    limiter = RateLimiter()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[*shared, limiter, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries (pymodbus, python-can, aiomqtt) log through stdlib logging: same format, same limits.
    handler = logging.StreamHandler(out)
    handler.addFilter(_StdlibRateLimit(limiter))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _library_component],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # pymodbus logs every failed attempt at ERROR; our device owner reports offline once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _library_component(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if record is not None and "component" not in event:
        parts = record.name.split(".")
        # Our own stdlib loggers (edge.telemetry.link) name their room; libraries get lib.<name>.
        ours = parts[0] in ("edge", "drivers") and len(parts) > 1
        event["component"] = parts[1] if ours else f"lib.{parts[0]}"
    return event
