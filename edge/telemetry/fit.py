"""Telemetry that never fails its caller: a field that does not fit its model goes out as null.

Validation is the contract's last line, not a safety function: a pack reporting SOC 255 must not
stop the publisher (a core service, whose failure stops the daemon). `fit()` validates; on
failure it nulls (or, when the field is not nullable, drops to its default) each offending
field, sets `quality: bad` and lists the fields in `invalid`, counts them, and logs each
(model, field) once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from drivers.core.log import get_logger

log = get_logger("telemetry.fit")

M = TypeVar("M", bound=BaseModel)

invalid_counts: Counter[str] = Counter()  # "<Model>.<field>" -> values dropped, process-wide
_logged: set[str] = set()


def _nullable(model: type[BaseModel], name: str) -> bool:
    f = model.model_fields.get(name)
    return f is not None and not f.is_required() and f.default is None


def fit(model: type[M], fields: dict[str, Any]) -> M | None:
    """The model, with offending fields nulled and flagged; None when even that fails (the
    caller skips this one update: counted and logged, never raised)."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        errors = e.errors()
    bad = sorted({str(err["loc"][0]) for err in errors if err["loc"]})
    cleaned = dict(fields)
    for name in bad:
        key = f"{model.__name__}.{name}"
        invalid_counts[key] += 1
        if key not in _logged:
            _logged.add(key)
            log.warning(
                "telemetry field does not fit its model; published as null",
                model=model.__name__,
                field=name,
                value=repr(fields.get(name))[:80],
            )
        if _nullable(model, name):
            cleaned[name] = None
        else:
            cleaned.pop(name, None)
    if "quality" in model.model_fields:
        cleaned["quality"] = "bad"
    if "invalid" in model.model_fields:
        cleaned["invalid"] = bad
    try:
        return model.model_validate(cleaned)
    except ValidationError as e2:
        key = f"{model.__name__}.*"
        invalid_counts[key] += 1
        if key not in _logged:
            _logged.add(key)
            log.error("telemetry update dropped", model=model.__name__, error=str(e2)[:200])
        return None
