"""The release as a station gets it: the wheel built from this checkout, installed from the
demo lock (the daemon lock plus `swapd demo`) into a fresh venv outside the checkout. Shared by
the wheel, install and lock tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Release:
    wheel: Path
    venv: Path

    @property
    def swapd(self) -> Path:
        return self.venv / "bin" / "swapd"


@dataclass(frozen=True)
class Pin:
    version: Version
    marker: str
    hashes: int
    direct: bool  # "via swapd (pyproject.toml)"


def read_lock(path: Path) -> dict[str, list[Pin]]:
    """A uv-compiled lock: package -> its pins (one per environment marker)."""
    pins: dict[str, list[Pin]] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text(encoding="utf-8"))
    for block in blocks:
        if block.startswith("#"):
            continue
        head = block.splitlines()[0].rstrip(" \\")
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+?)(?:\s*;\s*(.*))?", head)
        assert m, f"{path.name}: not a pin: {head!r}"
        pin = Pin(
            Version(m.group(2)),
            m.group(3) or "",
            block.count("--hash=sha256:"),
            "swapd (pyproject.toml)" in block,
        )
        pins.setdefault(canonicalize_name(m.group(1)), []).append(pin)
    return pins


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no checkout on the path: only what the venv installed can be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def build_wheel(out: Path) -> Path:
    # The pip cache is reused (nothing here disables it), so this is fast after the first run.
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, ROOT, cwd=out)
    (wheel,) = out.glob("swapd-*.whl")
    return wheel


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    base = tmp_path_factory.mktemp("release")
    assert not base.resolve().is_relative_to(ROOT)
    wheel = build_wheel(base)
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=base)
    pip = venv / "bin" / "pip"
    run(
        pip,
        "install",
        "--quiet",
        "--require-hashes",
        "-r",
        ROOT / "requirements/demo.txt",
        cwd=base,
    )
    run(pip, "install", "--quiet", "--no-deps", wheel, cwd=base)
    yield Release(wheel, venv)
