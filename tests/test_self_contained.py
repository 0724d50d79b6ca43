"""The repository stands alone: no tracked file names an absolute path of a developer's machine,
the checkout's own location, or a folder beside the checkout (the design notes and data the
project started from live outside it; what the code and tests need is copied in)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Workspace roots and home folders; `/etc/swapd`, `/var/lib/swapd`, `/dev/ttyUSB0` are the
# product's own paths and stay allowed. The lookbehind skips `a/root/b` inside longer paths.
ABSOLUTE = re.compile(r"(?<![\w./-])/(?:work|home|Users|root|mnt|srv)/")
# The folder of design notes and data that sat beside the checkout.
BESIDE = re.compile(r"(?<![\w-])shared/")
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+)")
# A Markdown file named anywhere (prose, code comments, docstrings): it must be one of ours.
MD_NAME = re.compile(r"(?<![\w.-])([\w./-]*[\w-]\.md)\b")
# A relative Markdown link target.
MD_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    files = []
    for name in filter(None, out.split("\0")):
        path = ROOT / name
        if path.resolve() == THIS or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (SQLite fixtures)
        files.append(path)
    return files


def test_there_are_files_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in tracked_text_files()}
    assert "README.md" in names and "pyproject.toml" in names


def test_no_absolute_path_outside_the_product() -> None:
    here = str(ROOT)
    parent = str(ROOT.parent) + "/"
    bad = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if ABSOLUTE.search(line) or here in line or parent in line:
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "absolute paths outside the product:\n" + "\n".join(bad)


def test_no_reference_to_a_folder_beside_the_checkout() -> None:
    bad = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if BESIDE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
            for m in CLIMB.finditer(line):
                target = (path.parent / m.group(1)).resolve()
                if not target.is_relative_to(ROOT):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: climbs out: {line.strip()}")
    assert not bad, "references outside the checkout:\n" + "\n".join(bad)


def test_every_markdown_file_named_is_in_the_repository() -> None:
    """Design notes the project started from (DESIGN.md, DOMAIN.md, ...) live outside the
    checkout: code and docs cite the pages in docs/ instead."""
    files = tracked_text_files()
    ours = {p.name for p in files} | {THIS.name}
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            for m in MD_NAME.finditer(line):
                if Path(m.group(1)).name not in ours:
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {m.group(1)}: {line.strip()}")
    assert not bad, "Markdown files that are not in the repository:\n" + "\n".join(bad)


def test_relative_markdown_links_resolve() -> None:
    bad = []
    for path in tracked_text_files():
        if path.suffix != ".md":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in MD_LINK.finditer(line):
                if not (path.parent / m.group(1)).exists():
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {m.group(1)}")
    assert not bad, "broken links:\n" + "\n".join(bad)
