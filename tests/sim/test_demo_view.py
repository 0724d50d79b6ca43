"""The live view: the model from realistic telemetry, rendered to text; malformed payloads; the
key state machine; and the whole loop against the embedded broker (with keys through a pty)."""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest
from rich.console import Console

from sim.broker import BrokerAddress, EmbeddedBroker
from sim.faults import FaultListener
from sim.view import InjectFault, Quit, ViewControls, ViewModel, render, run_view
from tests.sim.demo_fixtures import ROOT, event, feed, slot, station


def text_of(model: ViewModel, controls: ViewControls | None = None) -> str:
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(render(model, controls))
    return console.export_text()


def fed() -> ViewModel:
    m = ViewModel(ROOT)
    for topic, payload in feed():
        assert m.ingest(topic, payload), topic
    return m


def row_of(text: str, first: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(first))


def test_render_shows_every_panel_from_realistic_telemetry() -> None:
    text = text_of(fed())
    assert "station online" in text
    s03 = row_of(text, "s03")
    for cell in ("PK-S03-0042", "24%", "45.0", "612", "31", "charging", "running", "good"):
        assert cell in s03, (cell, s03)
    s10 = row_of(text, "s10")
    assert "80%" in s10 and "idle" in s10 and "standby" in s10
    # grid against its cap, tariff, grid mode and reason, pack counts
    assert "power 412.5 / cap 600 kW" in text
    assert "limit now 550 kW" in text
    assert "tariff valley" in text and "grid mode charge" in text and "(valley tariff)" in text
    assert "5 full, 6 charging" in text
    # the swap with both units and the step in progress
    assert "swap sw-0007" in text and "vehicle TAXI-88" in text and "running" in text
    assert "step in progress unlock" in text
    assert re.search(r"│ vehicle +started +unlock +300 ", text)
    assert re.search(r"│ rack +started +fetch +1200 ", text)
    assert "doors_closed✓" in text
    # alarms (from station telemetry, with the text from the alarm event) and events
    assert "Active alarms (1)" in text
    assert "slot.charger_offline" in text and "major" in text
    assert "swap.started" in text and "vehicle: unlock started" in text
    assert "23:10:00.250" in text


def test_summary_is_json_ready() -> None:
    m = fed()
    m.ingest(f"{ROOT}/event/swap/completed", event("swap.completed", 7, swap_id="sw-0007"))
    doc = orjson.loads(orjson.dumps(m.summary()))
    assert doc["online"] is True
    assert doc["slots_seen"][0] == "s01" and len(doc["slots_seen"]) == 12
    assert doc["events"]["swap.step"] == 3
    assert doc["swaps_completed"] == 1 and doc["swaps_failed"] == 0
    assert doc["active_alarms"] == ["slot.charger_offline@s07"]
    assert doc["grid_power_kw"] == 412.5 and doc["grid_mode"] == "charge"


def test_events_ring_keeps_the_latest_ten_newest_first() -> None:
    m = ViewModel(ROOT)
    for i in range(1, 26):
        m.ingest(f"{ROOT}/event/charge/started", event("charge.started", i, slot_id=f"x{i}"))
    assert len(m.events) == 10
    text = text_of(m)
    assert "slot x25" in text and "slot x16" in text and "slot x15 " not in text
    assert text.index("slot x25") < text.index("slot x16")


def test_alarms_follow_events_and_station_telemetry() -> None:
    m = fed()
    raised = {"code": "robot.estop", "source": "robot", "severity": "critical", "text": "E-stop"}
    m.ingest(f"{ROOT}/event/alarm/raised", event("alarm.raised", 9, **raised))
    assert set(m.alarms) == {("slot.charger_offline", "s07"), ("robot.estop", "robot")}
    m.ingest(f"{ROOT}/event/alarm/cleared", event("alarm.cleared", 10, **raised))
    assert set(m.alarms) == {("slot.charger_offline", "s07")}
    cleared = {**station(), "active_alarms": []}
    m.ingest(f"{ROOT}/telemetry/station", cleared)
    assert m.alarms == {}
    assert "Active alarms (0)" in text_of(m) and "none" in text_of(m)


def test_swap_outcomes_and_offline_status() -> None:
    m = fed()
    m.ingest(
        f"{ROOT}/event/swap/completed",
        event("swap.completed", 7, swap_id="sw-0007", duration_s=141.2, pack_out_id="PK-9"),
    )
    text = text_of(m)
    assert re.search(r"vehicle TAXI-88 +completed", text)
    assert "│ in 141 s, fitted PK-9, stored -" in text
    m.ingest(
        f"{ROOT}/event/swap/failed",
        event("swap.failed", 8, swap_id="sw-0008", step="lock", reason="torque out of window"),
    )
    text = text_of(m)
    assert re.search(r"vehicle TAXI-88 +failed", text)
    assert "│ torque out of window" in text
    assert "swap sw-0008 failed at lock: torque out of window" in text
    m.ingest(f"{ROOT}/status", {"online": False, "boot_id": "a1b2c3", "version": "0.1.0"})
    assert "station OFFLINE" in text_of(m)


def test_the_view_shows_the_swap_events_the_swap_core_publishes() -> None:
    """The swap core's events exactly as the outbox stores them (its payload models dumped):
    the units follow the steps and the completed swap shows its duration and packs."""
    from tests.edge.swap_fixtures import ANNOUNCED, CoreRig

    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: rig.has("swap.completed"))
    m = ViewModel(ROOT)
    for n, (etype, details) in enumerate(rig.published, start=1):
        msg = {**event(etype, n), "details": details}  # details carry their own `seq`
        assert m.ingest(f"{ROOT}/event/{etype.replace('.', '/')}", msg)
    assert m.units["vehicle"].step == "release" and m.units["vehicle"].state == "done"
    assert m.units["rack"].state == "done"
    done = rig.published[-1][1]
    assert done["duration_s"] > 60
    text = text_of(m)
    assert done["pack_out_id"] == "P-002" and done["pack_in_id"] == ANNOUNCED
    assert f"done in {done['duration_s']:.0f} s, fitted P-002, stored {ANNOUNCED}" in text
    assert "in - s" not in text


def test_missing_fields_show_a_dash() -> None:
    m = ViewModel(ROOT)
    m.ingest(f"{ROOT}/telemetry/slot/s01", {"slot_id": "s01"})
    m.ingest(f"{ROOT}/telemetry/station", {})
    m.ingest(f"{ROOT}/telemetry/robot", {})
    text = text_of(m)
    assert row_of(text, "s01").split() == ["s01", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert "power - / cap - kW" in text
    assert "tariff -" in text and "grid mode - (-)" in text
    assert "status unknown" in text


MALFORMED: list[tuple[str, Any]] = [
    ("telemetry/station", b"not json"),
    ("telemetry/station", b"[1, 2, 3]"),
    ("telemetry/station", b'"a string"'),
    ("telemetry/slot/s01", b"NaN"),
    ("telemetry/slot/s01", b"\xff\xfe"),
    ("event/swap/step", b"42"),
    ("status", b'{"online": "yes"}'),
    ("status", b"null"),
]

ODD_BUT_OBJECTS: list[tuple[str, dict[str, Any]]] = [
    ("telemetry/slot/s02", {"soc_pct": "abc", "power_kw": True, "pack_id": {"x": 1}}),
    ("telemetry/slot/s03", {"soc_pct": 250.0, "voltage_v": [1]}),
    ("telemetry/station", {"active_alarms": "everything", "grid_cap_kw": 0, "grid_power_kw": 5}),
    ("telemetry/station", {"active_alarms": [1, None, "raw.code", {"code": 5}]}),
    ("telemetry/robot", {"units": "oops", "axes_mm": [1], "interlocks": "x"}),
    ("telemetry/robot", {"units": {"vehicle": "busy", "rack": {"state": 3}}}),
    ("event/swap/step", {"details": ["not", "a", "dict"]}),
    ("event/swap/step", {"details": {"step": None, "unit": 7}}),
    ("event/alarm/raised", {"details": {}}),
    ("event/whatever/new", {"details": {"a": 1, "b": [1], "c": None}}),
]


def test_malformed_payloads_are_counted_and_never_crash() -> None:
    m = fed()
    before = text_of(m)
    for sub, raw in MALFORMED:
        assert m.ingest_raw(f"{ROOT}/{sub}", raw) is False, (sub, raw)
    assert m.dropped == len(MALFORMED)
    after = text_of(m)
    assert "msgs 29 dropped 8" in after
    # nothing else shown changed
    assert after.replace("msgs 29 dropped 8", "msgs 21 dropped 0") == before
    for sub, payload in ODD_BUT_OBJECTS:
        m.ingest_raw(f"{ROOT}/{sub}", orjson.dumps(payload))
    text = text_of(m)  # renders without raising
    assert row_of(text, "s02").split()[1:4] == ["-", "-", "-"]
    assert "250%" in row_of(text, "s03")
    assert "raw.code" in text
    # Ignored rather than dropped: topics the view does not show.
    assert m.ingest(f"{ROOT}/cmd/start_swap", {"cmd_id": "c1"}) is False
    assert m.ingest("other/root/telemetry/station", station()) is False
    assert m.ingest(f"{ROOT}/telemetry/slot/", slot("s01", 5, 1)) is False
    assert m.ignored == 3


def test_controls_menu_picks_device_then_fault_and_clears() -> None:
    c = ViewControls(devices={"ch01": ["offline", "fault_bits"], "robot": ["emergency_stop"]})
    assert c.on_key("x") is None
    assert c.on_key("f") is None and c.menu_open
    assert c.page_items() == ["ch01", "robot"]
    assert c.on_key("7") is None and c.device is None  # out of range: nothing
    assert c.on_key("2") is None and c.device == "robot"
    assert c.on_key("1") == InjectFault("robot", "emergency_stop", clear=False)
    assert not c.menu_open and "inject emergency_stop on robot" in c.message
    c.on_key("f")
    c.on_key("1")
    c.on_key("c")
    assert c.on_key("2") == InjectFault("ch01", "fault_bits", clear=True)
    c.on_key("f")
    c.on_key("1")
    c.on_key("\x1b")  # back to the devices
    assert c.menu_open and c.device is None
    c.on_key("\x1b")
    assert not c.menu_open
    assert c.on_key("q") == Quit()


def test_controls_page_through_many_devices() -> None:
    c = ViewControls(devices={f"ch{i:02d}": ["offline"] for i in range(1, 13)})
    c.on_key("f")
    assert c.page_items()[0] == "ch01" and len(c.page_items()) == 9
    c.on_key("n")
    assert c.page_items() == ["ch10", "ch11", "ch12"]
    c.on_key("n")
    assert c.page_items()[0] == "ch01"
    text = text_of(ViewModel(ROOT), c)
    assert "Inject fault: pick a device" in text and "page 1/2" in text


def test_no_devices_no_menu() -> None:
    c = ViewControls()
    assert c.on_key("f") is None and not c.menu_open
    assert "no simulated devices" in c.message


# ---- the loop against a real broker --------------------------------------------------------


@pytest.fixture
async def broker() -> AsyncIterator[BrokerAddress]:
    async with EmbeddedBroker() as b:
        yield b.address


async def _publish_until(broker: BrokerAddress, done: Any, messages: list[tuple[str, Any]]) -> None:
    import aiomqtt

    # Telemetry is QoS 0 and not retained, as the station sends it: repeat until it is seen.
    async with aiomqtt.Client(broker.host, broker.port) as pub:
        async with asyncio.timeout(20):
            while not done():
                for topic, payload in messages:
                    await pub.publish(topic, orjson.dumps(payload), qos=0)
                await asyncio.sleep(0.05)


async def test_run_view_against_the_embedded_broker(broker: BrokerAddress) -> None:
    console = Console(record=True, width=140, file=io.StringIO())
    model = ViewModel(ROOT)
    stop, ready = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        view = tg.create_task(
            run_view(broker.url, ROOT, model=model, console=console, stop=stop, ready=ready),
            name="test-view",
        )
        async with asyncio.timeout(10):
            await ready.wait()
        await _publish_until(broker, lambda: len(model.slots) == 12 and model.events, feed())
        stop.set()
    assert view.result() is model
    text = console.export_text()
    assert "PK-S03-0042" in row_of(text, "s03")
    assert "power 412.5 / cap 600 kW" in text
    assert "swap sw-0007" in text
    assert "q quit" not in text  # not a terminal: no keys offered


async def test_view_keys_inject_a_fault_through_the_broker(broker: BrokerAddress) -> None:
    """`f`, device 1, fault 2 typed on a pty reach a simulated device through the broker."""

    class Device:
        def __init__(self) -> None:
            self.got: list[tuple[str, Mapping[str, Any]]] = []
            self.seen = asyncio.Event()

        def faults(self) -> list[str]:
            return ["offline", "fault_bits"]

        def inject(self, fault: str, params: Mapping[str, Any]) -> None:
            self.got.append((fault, params))
            self.seen.set()

        def clear(self, fault: str) -> None:
            self.got.append((f"clear {fault}", {}))
            self.seen.set()

    device = Device()
    listener = FaultListener(broker, ROOT, {"ch01": device})
    master, slave = os.openpty()
    console = Console(record=True, width=140, file=io.StringIO())
    ready, stop = asyncio.Event(), asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            lt = tg.create_task(listener.run(), name="test-listener")
            view = tg.create_task(
                run_view(
                    broker,
                    ROOT,
                    console=console,
                    fault_devices={"ch01": device.faults()},
                    key_fd=slave,
                    ready=ready,
                    stop=stop,
                ),
                name="test-view",
            )
            async with asyncio.timeout(10):
                await ready.wait()
                await listener.subscribed.wait()
            os.write(master, b"f12")
            async with asyncio.timeout(10):
                await device.seen.wait()
            os.write(master, b"q")  # q stops the view by itself
            async with asyncio.timeout(10):
                await asyncio.wait({view})
            lt.cancel()
    finally:
        os.close(master)
        os.close(slave)
    assert device.got == [("fault_bits", {})]
    text = console.export_text()
    assert "inject fault_bits on ch01" in text
    assert "q quit  f fault" in text


async def test_view_says_when_the_broker_is_unreachable() -> None:
    from tests.conftest import free_port

    console = Console(record=True, width=140, file=io.StringIO())
    model = ViewModel(ROOT)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(
            run_view(
                f"mqtt://127.0.0.1:{free_port()}", ROOT, model=model, console=console, stop=stop
            ),
            name="test-view",
        )
        async with asyncio.timeout(10):
            while model.link == "connecting":
                await asyncio.sleep(0.01)
        stop.set()
    assert "reconnecting" in model.link
    assert "reconnecting]" in console.export_text()


def test_fault_menu_lists_every_simulated_device() -> None:
    from sim.faults import fault_menu

    menu = fault_menu(["ch01", "ch02"], ["s01"])
    assert list(menu) == ["ch01", "ch02", "pack-s01", "robot"]
    assert menu["robot"]["step_fault"] == {"unit": "vehicle", "step": "lock"}
    assert menu["robot"]["emergency_stop"] == {}
    c = ViewControls(devices=menu)
    for key in "f4":
        c.on_key(key)
    assert "(unit=vehicle step=lock)" in text_of(ViewModel(ROOT), c)
    assert c.on_key("4") == InjectFault(
        "robot", "step_fault", False, {"unit": "vehicle", "step": "lock"}
    )
    for key in "f4c":
        c.on_key(key)
    assert c.on_key("4") == InjectFault("robot", "step_fault", True, {})
    assert (
        "silent" in menu["ch01"]
        and "bit:<flag>" not in menu["ch01"]
        and "emergency_stop" in menu["robot"]
    )


async def test_logs_print_above_the_view_on_a_terminal(broker: BrokerAddress) -> None:
    """On a terminal, a log line during the view goes through Live's stderr proxy (printed
    above the view) instead of tearing it; the logging set-up is restored afterwards."""
    import logging
    import sys

    import structlog

    from drivers.core.log import get_logger
    from edge.app.logs import configure_logging

    saved_handlers = logging.getLogger().handlers[:]
    saved_config = structlog.get_config()
    configure_logging(stream=sys.stderr, json=True)
    stderr_before = sys.stderr
    console = Console(record=True, width=140, file=io.StringIO(), force_terminal=True)
    stop, ready = asyncio.Event(), asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                run_view(broker, ROOT, console=console, stop=stop, ready=ready, keys=False),
                name="test-view",
            )
            async with asyncio.timeout(10):
                await ready.wait()
            get_logger("test").warning("line from a component", marker=42)
            logging.getLogger("somelib").warning("line from a library")
            stop.set()
        assert sys.stderr is stderr_before
        assert structlog.get_config()["logger_factory"]._file.inner is stderr_before
    finally:
        logging.getLogger().handlers[:] = saved_handlers
        structlog.configure(**saved_config)
    text = console.export_text()
    assert '"event":"line from a component"' in text and '"marker":42' in text
    assert "line from a library" in text


def test_grid_panel_draws_the_predictive_plan() -> None:
    from sim.view import plan_sparkline

    m = fed()
    assert "plan next" not in text_of(m)  # no plan with other policies
    plan = [{"ends_in_s": 900.0 * (i + 1), "power_kw": kw} for i, kw in enumerate([0, 300, 600])]
    m.ingest(f"{ROOT}/telemetry/station", {**m.station, "grid_plan": plan})
    text = text_of(m)
    assert "plan next 1 h ▁▅█" in text
    assert plan_sparkline([{"power_kw": "x"}, "junk"], 600) is None
    assert plan_sparkline(None, 600) is None
