"""The peers are independent transcriptions: they never import the station's protocol code,
its simulators or our map files, so they cannot share the station's mistakes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PEERS = sorted(
    [
        HERE / "generic_peer.py",
        HERE / "gbt_bms.py",  # the BMS peer (it meets `swapd run` over SLCAN through the rig)
        HERE / "robot_plc.py",
        *(HERE / "vendors").glob("*.py"),
    ]
)


@pytest.mark.parametrize("path", PEERS, ids=[p.name for p in PEERS])
def test_peer_imports_neither_drivers_edge_nor_sim(path: Path) -> None:
    tree = ast.parse(path.read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    ]
    # nor a YAML reader: written from the documents, not loaded from our map files
    banned = ("drivers", "edge", "sim", "yaml")
    assert not [m for m in modules if m.split(".")[0] in banned], modules
