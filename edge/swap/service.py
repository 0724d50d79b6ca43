"""Builds the swap room from the station config (the composition root calls this)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.core.alarm_sink import AlarmSink
from drivers.core.clock import Clock
from drivers.robot.contract import RobotContract
from drivers.robot.modbus_port import ModbusRobotPort
from edge.config import StationConfig
from edge.events import EventSink
from edge.statefiles import StateFileError, journal_advice
from edge.swap.coordinator import SlotOutputs, SlotViews, SwapCoordinator
from edge.swap.journal import Journal, JournalError
from edge.swap.steps import StepGraph, load_step_graph

JOURNAL_NAME = "swap-journal.sqlite"


@dataclass
class SwapRoom:
    coordinator: SwapCoordinator
    port: ModbusRobotPort
    journal: Journal
    graph: StepGraph

    def close(self) -> None:
        self.port.close()
        self.journal.close()


def slot_numbers(cfg: StationConfig) -> dict[str, int]:
    """PLC slot number of each rack slot: its position in the config's `slots` list, from 1."""
    return {s.id: i + 1 for i, s in enumerate(cfg.slots)}


def build_swap(
    cfg: StationConfig,
    *,
    clock: Clock,
    outputs: SlotOutputs,
    slots: SlotViews,
    events: EventSink,
    alarms: AlarmSink,
    on_request: Callable[[str, str | None], None] | None = None,
    on_status: Callable[[], None] | None = None,
    steps_path: Path | None = None,
    state_dir: Path | None = None,
) -> SwapRoom:
    """Contract from `robot.map`, step graph from `robot.steps` (or `steps_path`), journal in `state_dir` (default `station.state_dir`, relative to the
    config file). Raises DataFileError for a bad map or step file."""
    contract = RobotContract.load(cfg.robot_map())
    graph = load_step_graph(steps_path or cfg.step_graph(), contract)
    port = ModbusRobotPort(contract, cfg.robot.host, cfg.robot.port, device_id=cfg.robot.unit_id)
    journal_path = cfg.resolve(state_dir or cfg.station.state_dir) / JOURNAL_NAME
    try:
        journal = Journal(journal_path)
        coord = SwapCoordinator(
            graph=graph,
            slot_numbers=slot_numbers(cfg),
            port=port,
            journal=journal,
            clock=clock,
            outputs=outputs,
            slots=slots,
            events=events,
            alarms=alarms,
            on_request=on_request,
            on_status=on_status,
        )
    except JournalError as e:
        raise StateFileError(journal_path, str(e), journal_advice(cfg.source)) from e
    return SwapRoom(coord, port, journal, graph)
