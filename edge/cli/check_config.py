"""`swapd check-config PATH`: exit 0 when valid, else 2 with one line per problem on stderr."""

from __future__ import annotations

import sys

from drivers.core.datafile import DataFileError
from edge.config import load_config


def check_config(path: str) -> int:
    try:
        cfg = load_config(path)
    except DataFileError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    print(
        f'{{"ok": true, "station": "{cfg.station.id}", "chargers": {len(cfg.chargers)}, "slots": {len(cfg.slots)}}}'
    )
    return 0
