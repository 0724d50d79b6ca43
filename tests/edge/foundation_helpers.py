"""Shared helpers for tests that need a runnable copy of the example station config."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "station.yaml"


def station_copy(tmp_path: Path, edit: dict[str, str] | None = None) -> Path:
    """The example station config copied into tmp_path with its data files, state in tmp."""
    dst = tmp_path / "cfg"
    shutil.copytree(ROOT / "config", dst, dirs_exist_ok=True)
    text = (
        (dst / "station.yaml")
        .read_text()
        .replace("state_dir: var/state", f"state_dir: {tmp_path / 'state'}")
    )
    for old, new in (edit or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    out = dst / "station.yaml"
    out.write_text(text)
    return out
