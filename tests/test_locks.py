"""The locks (requirements/*.txt) cover pyproject.toml and are not stale, checked offline: every
dependency of the extras each lock is compiled with (read from the Makefile's `make lock`
recipe) is pinned there with hashes at a version its range in pyproject.toml allows, every
locked package is pinned with hashes, and no lock keeps a direct dependency pyproject.toml no
longer has. `make lock-check` does the same against PyPI (it re-resolves and diffs)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.release_fixtures import read_lock

ROOT = Path(__file__).resolve().parents[1]
COMPILE_LINE = re.compile(r"\$\(UV_COMPILE\).*-o requirements/(\w+)\.txt")


def lock_extras() -> dict[str, set[str]]:
    """Lock file name -> the extras `make lock` compiles it with."""
    out = {}
    for line in (ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines():
        if m := COMPILE_LINE.search(line):
            out[m.group(1)] = set(re.findall(r"--extra (\w+)", line))
    return out


def wanted(extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in sorted(extras):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


LOCKS = lock_extras()


def test_make_lock_writes_the_three_locks_and_dev_has_every_extra() -> None:
    assert set(LOCKS) == {"daemon", "demo", "dev"}
    assert {p.stem for p in (ROOT / "requirements").glob("*.txt")} == set(LOCKS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert LOCKS["dev"] == set(project["optional-dependencies"])
    # The station's lock has the solver the predictive policy runs in its child process.
    assert LOCKS["daemon"] == {"solver"}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_package_is_pinned_with_hashes(lock: str) -> None:
    pins = read_lock(ROOT / "requirements" / f"{lock}.txt")
    assert pins
    unhashed = [name for name, ps in pins.items() for p in ps if p.hashes == 0]
    assert not unhashed, f"{lock}.txt: no hashes for {unhashed}"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pyproject_dependency_is_pinned_within_its_range(lock: str) -> None:
    pins = read_lock(ROOT / "requirements" / f"{lock}.txt")
    problems = []
    for req in wanted(LOCKS[lock]):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req}: not in {lock}.txt (run `make lock`)")
            continue
        for p in pins[name]:
            if not req.specifier.contains(p.version, prereleases=True):
                problems.append(f"{req}: {lock}.txt pins {p.version} (stale: run `make lock`)")
            if not p.direct:
                problems.append(f"{req}: {lock}.txt does not list it as ours (stale lock)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_no_lock_keeps_a_dependency_pyproject_dropped(lock: str) -> None:
    pins = read_lock(ROOT / "requirements" / f"{lock}.txt")
    ours = {canonicalize_name(r.name) for r in wanted(LOCKS[lock])}
    extra = sorted(n for n, ps in pins.items() if any(p.direct for p in ps) and n not in ours)
    assert not extra, f"{lock}.txt still has {extra} from pyproject.toml (stale: run `make lock`)"


def test_the_daemon_lock_is_the_demo_and_dev_locks_subset_at_the_same_versions() -> None:
    """One station, one set of versions: what the tests and the demo run is what ships."""
    daemon = read_lock(ROOT / "requirements" / "daemon.txt")
    for other in ("demo", "dev"):
        pins = read_lock(ROOT / "requirements" / f"{other}.txt")
        differ = {
            n: (ps, pins.get(n))
            for n, ps in daemon.items()
            if {p.version for p in ps} != {p.version for p in pins.get(n, [])}
        }
        assert not differ, f"{other}.txt differs from daemon.txt: {differ}"
