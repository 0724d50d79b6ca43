"""The committed diagram equals the generated one; step-graph and map errors name file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.core.datafile import DataFileError
from drivers.robot.contract import DEFAULT_CONTRACT, RobotContract
from edge.swap.diagram import generated_block, render_into
from edge.swap.steps import DEFAULT_STEPS, load_step_graph

ROOT = Path(__file__).resolve().parents[2]


def test_committed_diagram_matches_the_step_graph() -> None:
    doc = (ROOT / "docs" / "swap.md").read_text(encoding="utf-8")
    graph = load_step_graph()
    assert generated_block(graph) in doc, "run: python -m edge.swap.diagram --write docs/swap.md"
    assert render_into(doc, graph) == doc


def test_step_graph_errors_name_file_line_and_field(tmp_path: Path) -> None:
    text = DEFAULT_STEPS.read_text()
    bad = tmp_path / "steps.yaml"
    bad.write_text(text.replace("    plc_step: lift\n", "    plc_step: levitate\n", 1))
    with pytest.raises(DataFileError) as ei:
        load_step_graph(bad)
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "levitate" in t)
    assert str(ei.value) == (
        f"{bad}:{line}: steps.1.plc_step: vehicle unit has no PLC step 'levitate' in the robot contract"
    )
    bad.write_text(text.replace("after: [position]", "after: [teleport]"))
    with pytest.raises(DataFileError, match="unknown dependency 'teleport'"):
        load_step_graph(bad)
    bad.write_text(text.replace("vehicle_hv_off, vehicle_immobilised]", "vehicle_hv_of]", 1))
    with pytest.raises(
        DataFileError,
        match=r"steps.yaml:\d+: steps.1.interlocks.4: Input should be 'estop_chain_healthy'",
    ):
        load_step_graph(bad)
    bad.write_text(text.replace("timeout_s: 90", "timeout_s: 90\n    colour: red"))
    with pytest.raises(DataFileError, match=r"steps.0.colour: unknown key"):
        load_step_graph(bad)


def test_robot_map_checks(tmp_path: Path) -> None:
    c = RobotContract.load()
    assert c.step_code("rack", "store") == 4 and c.fault_name(8) == "torque_out_of_window"
    bad = tmp_path / "plc.yaml"
    bad.write_text(
        DEFAULT_CONTRACT.read_text().replace(
            "address: 2, type: u16, access: rw", "address: 3, type: u16, access: rw"
        )
    )
    with pytest.raises(DataFileError) as ei:
        RobotContract.load(bad)
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "vehicle_cmd_seq:" in t)
    assert str(ei.value) == (
        f"{bad}:{line}: points.vehicle_cmd_seq.address: "
        "vehicle_cmd_step, _arg, _seq must be contiguous (one write)"
    )
    # the shared map checks run first (overlaps, read-only tables, ...)
    bad.write_text(
        DEFAULT_CONTRACT.read_text().replace(
            "{table: input, address: 104", "{table: input, address: 103"
        )
    )
    with pytest.raises(DataFileError, match="overlaps point 'vehicle_fault_code'"):
        RobotContract.load(bad)


def test_malformed_status_is_flagged_not_trusted() -> None:
    c = RobotContract.load()
    regs = [0] * c.status_count
    regs[c.address("vehicle_state") - c.status_start] = 9
    with pytest.raises(ValueError, match="vehicle state 9 unknown"):
        c.decode_status(regs)
    with pytest.raises(ValueError, match="need 26"):
        c.decode_status(regs[:5])


def test_step_interlock_names_are_the_plc_inputs() -> None:
    from typing import get_args

    from drivers.robot.contract import INPUT_NAMES
    from edge.swap.steps import Interlock

    assert tuple(get_args(Interlock)) == INPUT_NAMES
