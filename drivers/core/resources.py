"""Data files shipped inside the packages (package data in the wheel), read with
importlib.resources, and the one rule a config file uses to name a data file.

A config value `builtin:NAME` is the shipped file NAME (plus its suffix) on a shelf (a folder of
a package: `drivers/modbus/maps/` for charger maps); any other value is a path, relative to the
config file's folder. So a station config works the same from a checkout, a wheel or
/etc/swapd, and a station with its own map names its own file.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from drivers.core.datafile import DataFileError, Problem

BUILTIN = "builtin:"


def shelf(package: str, *folders: str) -> Traversable:
    """A folder of shipped data inside `package`."""
    out = files(package)
    for f in folders:
        out = out / f
    return out


def shipped_names(where: Traversable, suffix: str = ".yaml") -> list[str]:
    """The names a config may use after `builtin:` for this shelf."""
    return sorted(p.name[: -len(suffix)] for p in where.iterdir() if p.name.endswith(suffix))


def is_builtin(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(BUILTIN)


def data_file(
    ref: str | Path, base: Path | str, where: Traversable, suffix: str = ".yaml"
) -> Traversable:
    """The file a config value names: `builtin:NAME` on the shelf `where`, else a path relative
    to `base` (the config file's folder). Raises DataFileError for an unknown builtin name."""
    if is_builtin(ref):
        assert isinstance(ref, str)
        name = ref[len(BUILTIN) :]
        found = where / f"{name}{suffix}"
        if "/" in name or not name or not found.is_file():
            known = ", ".join(BUILTIN + n for n in shipped_names(where, suffix))
            raise DataFileError(
                [Problem(ref, 0, "", f"no shipped file {ref!r} (shipped: {known})")]
            )
        return found
    p = Path(ref)
    return p if p.is_absolute() else Path(base) / p
