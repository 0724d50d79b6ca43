"""The installed version and the commit it was built from (`swapd --version`).

A wheel records its commit at build time (setup.py writes edge/_build_info.json); a source
checkout (editable install, tests) asks git."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

try:
    VERSION = version("swapd")
except PackageNotFoundError:  # running from a source tree without install
    VERSION = "0.0.0+src"


def build_commit() -> str:
    """The commit this code was built from: recorded in the wheel, else git, else unknown."""
    try:
        info = json.loads(files("edge").joinpath("_build_info.json").read_text(encoding="utf-8"))
        return str(info["commit"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-src"


def version_line() -> str:
    return f"swapd {VERSION} (commit {build_commit()})"
