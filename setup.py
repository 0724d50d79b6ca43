"""Build hook (metadata is in pyproject.toml): record the git commit a wheel is built from in
edge/_build_info.json, which `swapd --version` prints. Building outside a git checkout (from an
sdist) takes SWAPD_BUILD_COMMIT from the environment, else records "unknown"."""

import json
import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=HERE, capture_output=True, text=True, check=True
    ).stdout.strip()


def build_commit() -> str:
    if os.environ.get("SWAPD_BUILD_COMMIT"):
        return os.environ["SWAPD_BUILD_COMMIT"]
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        out = Path(self.build_lib) / "edge" / "_build_info.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"commit": build_commit()}) + "\n")


setup(cmdclass={"build_py": BuildPyWithCommit})
