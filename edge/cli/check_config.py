"""`swapd check-config [PATH ...] [--scenario S ...]`: exit 0 when every file is valid, else 2
with one `FILE:LINE: field: message` line per problem on stderr.

A PATH is a station config, or a scheduler scenario (a mapping with `arrivals` and no
`version`: what `swapd demo --scenario` and `swapd simulate-day --scenario` read). With a station
config, the scenarios kept beside it (`scenarios/*.yaml` in the config's folder) are checked too;
`--scenario` adds any other (a path or `builtin:NAME`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from drivers.core.datafile import DataFileError, Problem, read_yaml


def is_scenario(path: str) -> bool:
    """A scenario file, by its shape: station configs always carry `version`."""
    if path.startswith("builtin:"):
        return False
    try:
        data, _ = read_yaml(Path(path))
    except DataFileError:
        return False  # the station check reports it
    return isinstance(data, dict) and "arrivals" in data and "version" not in data


def scenarios_beside(config_path: str) -> list[str]:
    """The scenarios kept with a station config: `scenarios/*.yaml` in its folder."""
    folder = Path(config_path).parent / "scenarios"
    return [str(p) for p in sorted(folder.glob("*.yaml"))] if folder.is_dir() else []


def _check_scenario(ref: str) -> list[Problem]:
    from edge.scheduler.scenario import load_scenario

    try:
        load_scenario(ref)
    except DataFileError as e:
        return list(e.problems)
    return []


def check_config(path: str | list[str] | None = None, scenarios: list[str] | None = None) -> int:
    """Check station configs and scenarios; print the result (0) or the problems (2)."""
    from edge.config import load_config

    paths = [path] if isinstance(path, str) else list(path or [])
    problems: list[Problem] = []
    configs: list[dict[str, Any]] = []
    todo = list(scenarios or [])
    for p in paths:
        if is_scenario(p):
            todo.append(p)
            continue
        try:
            cfg = load_config(p)
        except DataFileError as e:
            problems += e.problems
        else:
            configs.append(
                {"station": cfg.station.id, "chargers": len(cfg.chargers), "slots": len(cfg.slots)}
            )
        todo += scenarios_beside(p)
    checked = list(dict.fromkeys(todo))
    for s in checked:
        problems += _check_scenario(s)
    if problems:
        for pr in problems:
            print(pr, file=sys.stderr)
        return 2
    result: dict[str, Any] = {"ok": True}
    if len(configs) == 1:
        result |= configs[0]
    elif configs:
        result["configs"] = configs
    if checked:
        result["scenarios"] = checked
    print(json.dumps(result))
    return 0
