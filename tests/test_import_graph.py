"""The import graph of edge, drivers and sim: no cycle, and the layering rules of the README.

Read with `ast`, nothing is imported. An import that runs when its module is loaded (module
level, not under `if TYPE_CHECKING:`) is an edge; `from a.b.c import x` also runs the packages
`a` and `a.b` (their __init__), so a cycle through a package __init__ shows as well. Layering:
`drivers` imports neither `edge` nor `sim` (not even lazily or for typing); simulated devices
(`sim.devices`) import `drivers` only; `edge` imports `sim` only inside functions of `edge.cli`
(the commands that start simulators).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "drivers", "sim")


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    target: str  # a module of the tree (a package names its __init__)
    line: int
    lazy: bool  # inside a function: runs when called, not when the module loads
    typing_only: bool  # under `if TYPE_CHECKING:`

    @property
    def at_load(self) -> bool:
        return not self.lazy and not self.typing_only

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} -> {self.target}"


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    own = {name, *_ancestors(name)}  # already being imported when this module runs
    found: list[Import] = []

    def add(targets: list[str], node: ast.stmt, lazy: bool, typing_only: bool) -> None:
        for t in targets:
            # Importing a.b.c runs a and a.b first (those not already running for us).
            for m in [*_ancestors(t), t]:
                if m in modules and m not in own:
                    found.append(Import(name, m, node.lineno, lazy, typing_only))

    def visit(node: ast.AST, lazy: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                add([a.name for a in child.names], child, lazy, typing_only)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (child.level - 1)]
                    base = ".".join([*base_parts, *([child.module] if child.module else [])])
                else:
                    base = child.module or ""
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in modules]
                add([base, *subs], child, lazy, typing_only)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True, typing_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy, typing_only)
            else:
                visit(child, lazy, typing_only)

    visit(tree, False, False)
    return found


def all_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    modules = find_modules(root, packages)
    return [i for name, path in modules.items() for i in imports_of(name, path, modules)]


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), load-time edges."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.at_load:
            graph.setdefault(i.importer, set()).add(i.target)
            graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _top(module: str) -> str:
    return module.partition(".")[0]


def layering_violations(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        src, dst = _top(i.importer), _top(i.target)
        if src == "drivers" and dst in ("edge", "sim"):
            bad.append(f"{i}: drivers imports {dst}")
        elif i.importer.startswith("sim.devices") and not (
            dst == "drivers" or i.target.startswith("sim.devices")
        ):
            bad.append(f"{i}: a simulated device imports more than drivers")
        elif src == "edge" and dst == "sim" and not (i.lazy and i.importer.startswith("edge.cli")):
            bad.append(f"{i}: edge imports sim (only edge.cli may, inside a function)")
    return bad


# ---- the house --------------------------------------------------------------------------------


def test_the_tree_is_read() -> None:
    imports = all_imports(ROOT)
    assert {i.importer for i in imports} >= {"edge.app.station", "drivers.can.session", "sim.world"}
    assert any(
        i.importer == "edge.app.station" and i.target == "edge.slot.service" for i in imports
    )


def test_no_import_cycle() -> None:
    found = cycles(all_imports(ROOT))
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layering() -> None:
    bad = layering_violations(all_imports(ROOT))
    assert bad == [], "\n".join(bad)


# ---- the checker itself, on a small tree ------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_finds_a_cycle_through_a_package_init(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "edge/__init__.py": "",
            "edge/room/__init__.py": "from edge.room.a import A\n",
            "edge/room/a.py": "A = 1\n",
            "edge/other.py": "from edge.room.a import A\n",
            # b imports the room's a, which runs the room's __init__ (and so b again)
            "edge/room/b.py": "from edge.other import A\n",
            "edge/lazy.py": "def f():\n    import edge.lazy2\n",
            "edge/lazy2.py": "import edge.lazy\n",
            "edge/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    import edge.typed2\n",
            "edge/typed2.py": "import edge.typed\n",
        },
    )
    imports = all_imports(tmp_path, ("edge",))
    assert cycles(imports) == []  # lazy and typing-only imports close no cycle
    (tmp_path / "edge/room/__init__.py").write_text("from edge.room.b import B\n")
    (tmp_path / "edge/room/b.py").write_text("from edge.other import A\nB = A\n")
    assert cycles(all_imports(tmp_path, ("edge",))) == [["edge.other", "edge.room", "edge.room.b"]]


@pytest.mark.parametrize(
    ("rel", "text", "ok"),
    [
        ("drivers/x.py", "def f():\n    import edge.cfg\n", False),
        ("drivers/x.py", "from edge import cfg\n", False),
        ("sim/devices/x.py", "import edge.cfg\n", False),
        ("sim/devices/x.py", "import drivers.y\n", True),
        ("sim/x.py", "import edge.cfg\n", True),
        ("edge/cfg.py", "import sim.x\n", False),
        ("edge/cli/run.py", "import sim.x\n", False),
        ("edge/cli/run.py", "def f():\n    from sim import x\n", True),
    ],
)
def test_checker_layering(tmp_path: Path, rel: str, text: str, ok: bool) -> None:
    _tree(
        tmp_path,
        {
            "edge/__init__.py": "",
            "edge/cfg.py": "",
            "edge/cli/__init__.py": "",
            "drivers/__init__.py": "",
            "drivers/y.py": "",
            "sim/__init__.py": "",
            "sim/x.py": "",
            "sim/devices/__init__.py": "",
        },
    )
    _tree(tmp_path, {rel: text})
    assert (layering_violations(all_imports(tmp_path)) == []) == ok
