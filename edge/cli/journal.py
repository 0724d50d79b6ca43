"""`swapd journal check|rebuild --config PATH`: the offline way out of a corrupt swap journal.

`check` opens the journal (never creating it), runs SQLite's integrity check and decodes every
record and the snapshot: exit 0 when sound, 2 with one line per problem. `rebuild` (only with
`--yes`, after the operator has looked at the rack) moves the journal aside as
`<name>.corrupt-<UTC time>` and leaves no journal: the next `swapd run` starts as on first boot,
probing every slot, so the inventory is rebuilt from what the slots' packs report (their BRM
identities); no swap is resumed. The PLC's registers are checked at that start too: a robot that
is busy, or whose last step left a pack on it, refuses swaps until the operator corrects the
inventory (`SwapSequence.plc_disagrees`). Run it with the daemon stopped.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _journal_path(config_path: str) -> Path:
    from edge.config import load_config
    from edge.swap.service import JOURNAL_NAME

    cfg = load_config(config_path)
    return cfg.resolve(cfg.station.state_dir) / JOURNAL_NAME


def check(config_path: str) -> int:
    from edge.swap.journal import Journal, JournalError

    path = _journal_path(config_path)
    if not path.exists():
        print(f"{path}: no journal (first boot: every slot is probed)")
        return 0
    try:
        j = Journal(path)
    except JournalError as e:
        print(f"{path}: cannot open: {e}", file=sys.stderr)
        return 2
    try:
        problems = j.check()
        count = j.count() if not problems else 0
    finally:
        j.close()
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if problems:
        print(f"rebuild with: swapd journal rebuild --config {config_path} --yes", file=sys.stderr)
        return 2
    print(f"{path}: ok, {count} records")
    return 0


def rebuild(config_path: str, yes: bool) -> int:
    path = _journal_path(config_path)
    if not yes:
        print(
            f"this moves {path} aside; the next start probes every slot and rebuilds the "
            "inventory from the packs and the PLC (no swap is resumed). Check the robot is "
            "parked and the rack matches, then repeat with --yes",
            file=sys.stderr,
        )
        return 2
    if not path.exists():
        print(f"{path}: no journal; nothing to move")
        return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{path}.corrupt-{stamp}{suffix}"))
    print(f"{path}: moved aside as {path.name}.corrupt-{stamp}; start swapd to rebuild")
    return 0


def register(sub: Any, handlers: dict[str, Any]) -> None:
    p = sub.add_parser("journal", help="check or rebuild the swap journal (daemon stopped)")
    p.add_argument("action", choices=("check", "rebuild"))
    p.add_argument("--config", required=True)
    p.add_argument("--yes", action="store_true", help="rebuild: the operator confirms")

    def run(args: argparse.Namespace) -> int:
        if args.action == "check":
            return check(args.config)
        return rebuild(args.config, args.yes)

    handlers["journal"] = run
