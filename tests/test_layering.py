"""The layering rule of docs/architecture.md, read from the source: `drivers` imports neither
`edge` nor `sim`; the simulated devices (`sim/devices`) import `drivers` only; `edge` imports
`sim` only inside a function of its CLI (the commands that start simulators)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drivers", "edge", "sim")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level package, line, at module level) for every absolute import of our packages."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_level = set()
    for stmt in tree.body:
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            module_level.update(id(n) for n in ast.walk(stmt))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                out.append((top, node.lineno, id(node) in module_level))
    return out


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    return files


def test_drivers_imports_neither_edge_nor_sim() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {top}"
        for p in sources("drivers")
        for top, line, _ in imports(p)
        if top != "drivers"
    ]
    assert not bad, "\n".join(bad)


def test_simulated_devices_import_drivers_only() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {top}"
        for p in sources("sim/devices")
        for top, line, _ in imports(p)
        if top == "edge"
    ]
    assert not bad, "\n".join(bad)


def test_edge_imports_sim_only_lazily_from_its_cli() -> None:
    bad = []
    for p in sources("edge"):
        for top, line, at_module_level in imports(p):
            if top != "sim":
                continue
            in_cli = p.relative_to(ROOT).parts[:2] == ("edge", "cli")
            if at_module_level or not in_cli:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports sim")
    assert not bad, "\n".join(bad)
