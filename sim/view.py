"""The live terminal view: fed only by the station's MQTT telemetry and events, like any backend.

Three layers: `ViewModel` ingests (topic, payload) and keeps state (pure, tolerant: a missing or
ill-typed field shows as '-'; a payload that is not a JSON object is counted and dropped);
`render(model, controls)` builds a rich renderable from it; `run_view(...)` subscribes to
`<root>/#` with aiomqtt, redraws ~4 times a second in a `rich.live.Live`, and reads keys from
stdin when it is a terminal (`q` quit, `f` fault menu). Field names follow the telemetry models
(edge/telemetry/models.py): StationTelemetryMessage, SlotTelemetryMessage, RobotTelemetryMessage,
EventMessage.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import orjson
from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from drivers.core.backoff import Backoff
from drivers.core.log import get_logger
from edge.telemetry.models import EventType
from sim.broker import BrokerAddress
from sim.faults import MqttCredentials, mqtt_client, publish_fault

_log = get_logger("sim.view")

DASH = "-"
# Rack-side steps (robot-plc.yaml); every other step belongs to the vehicle-side unit.
RACK_STEPS = frozenset({"fetch", "take", "give", "store", "return_to_shuttle", "put_back"})
UNITS = ("vehicle", "rack")


# ---- the pure part ------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _str(v: Any) -> str:
    if v is None or isinstance(v, dict | list):
        return DASH
    s = str(v)
    return s if s else DASH


def fmt(v: Any, spec: str = ".1f") -> str:
    n = _num(v)
    return DASH if n is None else format(n, spec)


@dataclass
class UnitView:
    state: str = DASH
    step: str = DASH


@dataclass
class SwapView:
    swap_id: str = DASH
    vehicle_id: str = DASH
    state: str = DASH  # running / completed / failed
    step: str = DASH
    detail: str = ""


@dataclass
class EventLine:
    ts: str
    type: str
    summary: str


@dataclass
class ViewModel:
    """What the view knows, built only from MQTT messages under `root`."""

    root: str
    events_kept: int = 10
    online: bool | None = None
    station: dict[str, Any] = field(default_factory=dict)
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    robot: dict[str, Any] = field(default_factory=dict)
    units: dict[str, UnitView] = field(default_factory=lambda: {u: UnitView() for u in UNITS})
    swap: SwapView = field(default_factory=SwapView)
    alarms: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: deque[EventLine] = field(default_factory=deque)
    event_counts: Counter[str] = field(default_factory=Counter)
    received: int = 0
    link: str = "connecting"  # the view's own MQTT connection
    dropped: int = 0  # not JSON, not an object, or a topic part that makes no sense
    ignored: int = 0  # well-formed but not something the view shows (commands, sim faults)

    def ingest_raw(self, topic: str, payload: bytes) -> bool:
        """Decode and ingest; False (and counted) when the payload is not JSON."""
        try:
            data = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            self.received += 1
            self.dropped += 1
            return False
        return self.ingest(topic, data)

    def ingest(self, topic: str, payload: Any) -> bool:
        self.received += 1
        head = self.root + "/"
        if not topic.startswith(head):
            self.ignored += 1
            return False
        parts = topic[len(head) :].split("/")
        try:
            handled = self._route(parts, payload)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            # A payload of the right shape but wrong inner types: keep the loop alive.
            _log.debug("view dropped a payload", topic=topic, error=str(e))
            handled = None
        if handled is None:
            self.dropped += 1
            return False
        if not handled:
            self.ignored += 1
        return handled

    def _route(self, parts: list[str], payload: Any) -> bool | None:
        """True = shown, False = ignored, None = malformed."""
        if parts == ["status"]:
            if not isinstance(payload, dict) or not isinstance(payload.get("online"), bool):
                return None
            self.online = payload["online"]
            return True
        if not isinstance(payload, dict):
            return None if parts[0] in ("telemetry", "event") else False
        match parts:
            case ["telemetry", "station"]:
                self.station = payload
                if isinstance(payload.get("active_alarms"), list):
                    self._alarms_from_station(payload["active_alarms"])
            case ["telemetry", "slot", slot_id] if slot_id:
                self.slots[slot_id] = payload
            case ["telemetry", "robot"]:
                self.robot = payload
                self._units_from_robot(payload.get("units"))
            case ["event", room, name] if room and name:
                # Topic `event/<room>/<name>` carries type `<room>.<name>`.
                self._event(f"{room}.{name}", payload)
            case _:
                return False
        return True

    def summary(self) -> dict[str, Any]:
        """What was seen, as one JSON-ready object (for a headless run's result line)."""
        return {
            "online": self.online,
            "messages": self.received,
            "dropped": self.dropped,
            "slots_seen": sorted(self.slots),
            "events": dict(sorted(self.event_counts.items())),
            "swaps_completed": self.event_counts[EventType.SWAP_COMPLETED],
            "swaps_failed": self.event_counts[EventType.SWAP_FAILED],
            "active_alarms": [f"{code}@{source}" for code, source in sorted(self.alarms)],
            "grid_power_kw": _num(self.station.get("grid_power_kw")),
            "grid_mode": self.station.get("grid_mode"),
        }

    def _alarms_from_station(self, refs: list[Any]) -> None:
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for ref in refs:
            if isinstance(ref, dict):
                key = (_str(ref.get("code")), _str(ref.get("source")))
                current[key] = {**self.alarms.get(key, {}), **ref}
            elif isinstance(ref, str):  # tolerate a bare list of codes
                current[(ref, DASH)] = {"code": ref}
        self.alarms = current

    def _units_from_robot(self, units: Any) -> None:
        if not isinstance(units, dict):
            return
        for name, u in units.items():
            if isinstance(u, dict):
                view = self.units.setdefault(str(name), UnitView())
                view.state = _str(u.get("state"))
                view.step = _str(u.get("step"))

    def _event(self, event_type: str, msg: dict[str, Any]) -> None:
        raw = msg.get("details")
        d: dict[str, Any] = raw if isinstance(raw, dict) else {}
        ts = _str(msg.get("ts"))
        self.event_counts[event_type] += 1
        summary = self._apply_event(event_type, d)
        self.events.append(EventLine(ts, event_type, summary))
        while len(self.events) > self.events_kept:
            self.events.popleft()

    def _apply_event(self, event_type: str, d: dict[str, Any]) -> str:
        s = self.swap
        if event_type == EventType.SWAP_STARTED:
            self.swap = SwapView(_str(d.get("swap_id")), _str(d.get("vehicle_id")), "running")
            for u in self.units.values():
                u.state, u.step = "idle", DASH
            return f"swap {self.swap.swap_id} vehicle {self.swap.vehicle_id}"
        if event_type == EventType.SWAP_STEP:
            step, state = _str(d.get("step")), _str(d.get("state"))
            unit = _str(d.get("unit"))
            unit = unit if unit in self.units else ("rack" if step in RACK_STEPS else "vehicle")
            s.swap_id = _str(d.get("swap_id")) if d.get("swap_id") else s.swap_id
            missing = d.get("missing")
            if isinstance(missing, list) and missing:
                # blocked: the unit did not move; say what it waits for
                return f"{unit}: {step} {state}, waiting for {', '.join(map(str, missing))}"
            self.units[unit].step, self.units[unit].state = step, state
            s.step = step
            return f"{unit}: {step} {state}"
        if event_type == EventType.SWAP_COMPLETED:
            s.state, s.step = "completed", DASH
            duration = fmt(d.get("duration_s"), ".0f")
            fitted = _str(d.get("pack_out_id"))
            stored = _str(d.get("pack_in_id"))
            s.detail = f"in {duration} s, fitted {fitted}, stored {stored}"
            return f"swap {_str(d.get('swap_id'))} done {s.detail}"
        if event_type == EventType.SWAP_FAILED:
            s.state = "failed"
            s.detail = _str(d.get("reason"))
            return f"swap {_str(d.get('swap_id'))} failed at {_str(d.get('step'))}: {s.detail}"
        if event_type in (EventType.ALARM_RAISED, EventType.ALARM_CLEARED):
            key = (_str(d.get("code")), _str(d.get("source")))
            if event_type == EventType.ALARM_RAISED:
                self.alarms[key] = {**self.alarms.get(key, {}), **d}
            else:
                self.alarms.pop(key, None)
            return f"{key[0]} @ {key[1]}: {_str(d.get('text'))}"
        if event_type in (EventType.CHARGE_STARTED, EventType.CHARGE_STOPPED):
            reason = f" ({_str(d.get('reason'))})" if d.get("reason") else ""
            return f"slot {_str(d.get('slot_id'))} pack {_str(d.get('pack_id'))}{reason}"
        return ", ".join(f"{k}={_str(v)}" for k, v in list(d.items())[:4])


# ---- keys and the fault menu (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class InjectFault:
    device_id: str
    fault: str
    clear: bool
    params: Mapping[str, Any] = field(default_factory=dict)


KeyAction = Quit | InjectFault
_PAGE = 9


@dataclass
class ViewControls:
    """The key state machine: `q` quits; `f` opens the menu of devices, a digit picks one, a digit
    picks its fault; `c` toggles clearing, `n` next page, Esc/backspace back, `f` closes."""

    # device id -> its faults: names, or {name: params the menu sends}
    devices: Mapping[str, Mapping[str, Mapping[str, Any]] | Sequence[str]] = field(
        default_factory=dict
    )
    menu_open: bool = False
    device: str | None = None
    clear: bool = False
    page: int = 0
    message: str = ""
    active: bool = False  # keys are being read (stdin is a terminal)

    def items(self) -> list[str]:
        return list(self.devices) if self.device is None else list(self.devices[self.device])

    def params(self, fault: str) -> Mapping[str, Any]:
        faults = self.devices[self.device] if self.device is not None else {}
        return faults.get(fault, {}) if isinstance(faults, Mapping) else {}

    def page_items(self) -> list[str]:
        return self.items()[self.page * _PAGE : (self.page + 1) * _PAGE]

    def on_key(self, key: str) -> KeyAction | None:
        if key == "q":
            return Quit()
        if not self.menu_open:
            if key == "f":
                if not self.devices:
                    self.message = "no simulated devices to inject into"
                else:
                    self.menu_open, self.device, self.page, self.message = True, None, 0, ""
            return None
        if key == "f":
            self.menu_open = False
        elif key in ("\x1b", "\x7f", "\b"):
            if self.device is None:
                self.menu_open = False
            else:
                self.device, self.page = None, 0
        elif key == "c":
            self.clear = not self.clear
        elif key == "n":
            pages = max(1, math.ceil(len(self.items()) / _PAGE))
            self.page = (self.page + 1) % pages
        elif key.isdigit() and key != "0":
            shown = self.page_items()
            i = int(key) - 1
            if i < len(shown):
                if self.device is None:
                    self.device, self.page = shown[i], 0
                else:
                    action = InjectFault(
                        self.device,
                        shown[i],
                        self.clear,
                        {} if self.clear else self.params(shown[i]),
                    )
                    verb = "clear" if self.clear else "inject"
                    self.message = f"{verb} {shown[i]} on {self.device}"
                    self.menu_open, self.device = False, None
                    return action
        return None


# ---- rendering ----------------------------------------------------------------------------------

_PHASE_STYLE = {"charging": "green", "idle": "dim", "fault": "bold red", "error": "bold red"}
_QUALITY_STYLE = {"good": "green", "stale": "yellow", "bad": "bold red"}
_SEVERITY_STYLE = {"critical": "bold red", "major": "red", "minor": "yellow", "warning": "cyan"}


def bar(fraction: float | None, width: int = 10) -> str:
    if fraction is None:
        return DASH
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def _soc(v: Any) -> Text:
    n = _num(v)
    if n is None:
        return Text(DASH)
    style = "red" if n < 20 else "yellow" if n < 80 else "green"
    return Text(f"{bar(n / 100)} {n:3.0f}%", style=style)


def _styled(v: Any, styles: Mapping[str, str]) -> Text:
    s = _str(v)
    return Text(s, style=styles.get(s, ""))


def _slots_table(model: ViewModel) -> Table:
    t = Table(title="Rack slots", box=box.SIMPLE_HEAD, expand=True, title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("slot", "left"),
        ("pack", "left"),
        ("SOC", "left"),
        ("kW", "right"),
        ("V", "right"),
        ("T max °C", "right"),
        ("phase", "left"),
        ("charger", "left"),
        ("quality", "left"),
    )
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=True)
    for slot_id in sorted(model.slots):
        s = model.slots[slot_id]
        unavailable = s.get("available") is False
        t.add_row(
            Text(slot_id, style="strike red" if unavailable else ""),
            _str(s.get("pack_id")),
            _soc(s.get("soc_pct")),
            fmt(s.get("power_kw")),
            fmt(s.get("voltage_v"), ".0f"),
            fmt(s.get("temp_max_c"), ".0f"),
            _styled(s.get("session_phase"), _PHASE_STYLE),
            _str(s.get("charger_state")),
            _styled(s.get("quality"), _QUALITY_STYLE),
        )
    if not model.slots:
        t.add_row("-", "no slot telemetry yet", "", "", "", "", "", "", "")
    return t


_SPARK = "▁▂▃▄▅▆▇█"


def plan_sparkline(plan: Any, cap_kw: float | None) -> str | None:
    """The predictive plan's next hours (station telemetry `grid_plan`) as one block character
    per step, scaled to the cap; None without a usable plan (bad entries are skipped)."""
    if not isinstance(plan, list) or not plan:
        return None
    kws = [_num(p.get("power_kw")) for p in plan if isinstance(p, dict)]
    vals = [k for k in kws if k is not None]
    if not vals:
        return None
    top = cap_kw if cap_kw else max(max(vals), 1.0)
    n = len(_SPARK) - 1
    return "".join(_SPARK[round(max(0.0, min(1.0, k / top)) * n)] for k in vals)


def _grid_panel(model: ViewModel) -> Panel:
    st = model.station
    power, cap = _num(st.get("grid_power_kw")), _num(st.get("grid_cap_kw"))
    limit = _num(st.get("grid_limit_kw"))
    frac = power / cap if power is not None and cap else None
    lines = Text()
    lines.append(f"power {fmt(power)} / cap {fmt(cap, '.0f')} kW  ")
    lines.append(bar(frac, 20), style="red" if frac is not None and frac > 0.95 else "green")
    lines.append(f"\nlimit now {fmt(limit, '.0f')} kW")
    if st.get("remote_limit_kw") is not None:
        lines.append(f"  remote {fmt(st.get('remote_limit_kw'), '.0f')} kW")
        lines.append(f" until {_str(st.get('remote_limit_valid_until'))}")
    spark = plan_sparkline(st.get("grid_plan"), cap)
    if spark is not None:
        plan = st["grid_plan"]
        hours = (_num(plan[-1].get("ends_in_s")) or 0.0) / 3600 if isinstance(plan[-1], dict) else 0
        lines.append(f"\nplan next {hours:.0f} h ")
        lines.append(spark, style="cyan")
        lines.append(" (predictive, planned grid kW per step)")
    lines.append(f"\ntariff {_str(st.get('tariff_period'))}")
    lines.append(f"   grid mode {_str(st.get('grid_mode'))}", style="bold")
    lines.append(f" ({_str(st.get('grid_reason'))})")
    lines.append(f"\nmode {_str(st.get('operating_mode'))}   packs ")
    lines.append(
        f"{fmt(st.get('packs_full'), '.0f')} full, {fmt(st.get('packs_charging'), '.0f')} "
        f"charging, {fmt(st.get('packs_unavailable'), '.0f')} unavailable "
        f"of {fmt(st.get('packs_total'), '.0f')}"
    )
    return Panel(lines, title="Grid", title_align="left", box=box.ROUNDED)


def _swap_panel(model: ViewModel) -> Panel:
    r, s = model.robot, model.swap
    head = Text()
    head.append(f"swap {s.swap_id if s.swap_id != DASH else _str(r.get('swap_id'))}")
    head.append(f"  vehicle {s.vehicle_id}  ")
    head.append(s.state, style={"failed": "bold red", "completed": "green"}.get(s.state, "bold"))
    if s.detail:
        head.append(f"\n{s.detail}")
    head.append(f"\nsequence {_str(r.get('sequence_state'))}   step in progress ")
    head.append(_str(r.get("step")) if r.get("step") else s.step, style="bold cyan")
    head.append(f"   quality {_str(r.get('quality'))}")
    units = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    units.add_column("unit")
    units.add_column("state")
    units.add_column("step")
    units.add_column("position mm", justify="right")
    raw_axes = r.get("axes_mm")
    axes: dict[str, Any] = raw_axes if isinstance(raw_axes, dict) else {}
    for name, u in model.units.items():
        units.add_row(name, u.state, u.step, fmt(axes.get(name), ".0f"))
    interlocks = r.get("interlocks")
    il = Text("interlocks ")
    if isinstance(interlocks, dict) and interlocks:
        for k, v in interlocks.items():
            il.append(
                f"{k}{'✓' if v is True else '✗'} ", style="green" if v is True else "bold red"
            )
    else:
        il.append(DASH)
    return Panel(Group(head, units, il), title="Swap", title_align="left", box=box.ROUNDED)


def _alarms_panel(model: ViewModel) -> Panel:
    if not model.alarms:
        body: RenderableType = Text("none", style="green")
    else:
        body = Text()
        for (code, source), a in sorted(model.alarms.items()):
            sev = _str(a.get("severity"))
            body.append(f"{sev} ", style=_SEVERITY_STYLE.get(sev, ""))
            body.append(f"{code} @ {source}", style="bold")
            body.append(f" {_str(a.get('text'))}\n" if a.get("text") else "\n")
        body.rstrip()
    return Panel(body, title=f"Active alarms ({len(model.alarms)})", title_align="left")


def _time_of_day(ts: str) -> str:
    """`2026-11-25T23:10:00.250Z` -> `23:10:00.250`; anything else as it came."""
    return ts[11:-1] if len(ts) >= 20 and ts[10] == "T" and ts.endswith("Z") else ts


def _events_panel(model: ViewModel) -> Panel:
    t = Table(box=None, show_header=False, pad_edge=False, expand=True)
    t.add_column("ts", no_wrap=True, style="dim")
    t.add_column("type", no_wrap=True, style="bold")
    t.add_column("summary", overflow="ellipsis", no_wrap=True, ratio=1)
    for e in reversed(model.events):
        t.add_row(_time_of_day(e.ts), e.type, e.summary)
    if not model.events:
        t.add_row("", "no events yet", "")
    return Panel(t, title="Latest events", title_align="left")


def _menu_panel(controls: ViewControls) -> Panel:
    lines = Text()
    items = controls.page_items()
    what = "device" if controls.device is None else f"fault on {controls.device}"
    for i, name in enumerate(items, 1):
        params = controls.params(name) if controls.device is not None else {}
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f" {i} {name}" + (f" ({shown})" if shown else "") + "\n")
    pages = max(1, math.ceil(len(controls.items()) / _PAGE))
    lines.append(
        f"page {controls.page + 1}/{pages}  n next  c clear-mode "
        f"[{'ON' if controls.clear else 'off'}]  Esc back  f close",
        style="dim",
    )
    return Panel(lines, title=f"Inject fault: pick a {what}", border_style="magenta")


def render(model: ViewModel, controls: ViewControls | None = None) -> RenderableType:
    if model.online is None:
        online = Text("status unknown", "yellow")
    else:
        online = Text("online", "green") if model.online else Text("OFFLINE", "bold red")
    header = Text.assemble(
        ("swapd ", "bold"),
        model.root,
        "  station ",
        online,
        f"  ts {_str(model.station.get('ts'))}",
        f"  msgs {model.received} dropped {model.dropped}",
        ("" if model.link == "connected" else f"  [{model.link}]", "yellow"),
        ("   q quit  f fault" if controls is not None and controls.active else "", "dim"),
    )
    panels = Table.grid(expand=True, padding=(0, 1))
    for ratio in (4, 5, 4):
        panels.add_column(ratio=ratio)
    panels.add_row(_grid_panel(model), _swap_panel(model), _alarms_panel(model))
    parts: list[RenderableType] = [header, _slots_table(model), panels, _events_panel(model)]
    if controls is not None and controls.menu_open:
        parts.append(_menu_panel(controls))
    if controls is not None and controls.message:
        parts.append(Text(controls.message, style="magenta"))
    return Group(*parts)


# ---- the async loop -----------------------------------------------------------------------------


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else None
    except (OSError, ValueError):  # replaced or closed stdin (pytest capture, daemons)
        return None


@contextlib.contextmanager
def _keys(callback: Callable[[str], None], fd: int | None) -> Iterator[bool]:
    """Feed single key presses to `callback` without blocking, only when `fd` is a terminal."""
    if fd is None or not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        for ch in os.read(fd, 32).decode(errors="ignore"):
            callback(ch)

    tty.setcbreak(fd)
    loop.add_reader(fd, readable)
    try:
        yield True
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _logs_above_live(active: bool) -> Iterator[None]:
    """While Live owns the terminal, send log lines through its stderr proxy so they print
    above the view instead of tearing it. The logging set-up (edge/app/logs.py) holds the stderr
    it was given, so its stream is swapped for the proxy and restored afterwards."""
    if not active:
        yield
        return
    import logging

    import structlog

    from edge.app.logs import LossyStream

    proxy = sys.stderr  # rich's FileProxy while Live redirects stderr
    real = {id(sys.__stderr__), id(getattr(proxy, "rich_proxied_file", None))}

    def to_terminal(stream: object) -> bool:
        return id(getattr(stream, "inner", stream)) in real  # through the LossyStream wrapper

    lossy: Any = LossyStream(proxy)  # a TextIO in all but name
    saved_factory = structlog.get_config()["logger_factory"]
    # Only loggers that write to the terminal; one sent to a file stays there.
    structlog_to_terminal = to_terminal(getattr(saved_factory, "_file", None))
    if structlog_to_terminal:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=lossy))
    swapped = [
        (h, h.stream)
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and to_terminal(h.stream)
    ]
    for h, _ in swapped:
        h.setStream(lossy)
    try:
        yield
    finally:
        for h, stream in swapped:
            h.setStream(stream)
        if structlog_to_terminal:
            structlog.configure(logger_factory=saved_factory)


async def follow_station(
    broker: BrokerAddress | str,
    root: str,
    model: ViewModel,
    *,
    credentials: MqttCredentials | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Feed `model` from `<root>/#` until cancelled, reconnecting with a capped backoff. `ready`
    is set on every (re)subscription; `model.link` says how the connection stands. Usable
    without a screen (a headless demo summarises the model at the end)."""
    client = mqtt_client(broker, credentials)
    backoff = Backoff(0.2, 5.0)
    while True:
        try:
            async with client:
                await client.subscribe(f"{root}/#", qos=1)
                model.link = "connected"
                if ready is not None:
                    ready.set()
                backoff.reset()
                async for msg in client.messages:
                    payload = msg.payload if isinstance(msg.payload, bytes) else b""
                    model.ingest_raw(msg.topic.value, payload)
        except aiomqtt.MqttError as e:
            model.link = f"broker: {e}; reconnecting"
            await asyncio.sleep(backoff.next_delay())


async def run_view(
    broker: BrokerAddress | str,
    root: str,
    *,
    model: ViewModel | None = None,
    console: Console | None = None,
    refresh_hz: float = 4.0,
    stop: asyncio.Event | None = None,
    fault_devices: Mapping[str, Mapping[str, Mapping[str, Any]] | Sequence[str]] | None = None,
    credentials: MqttCredentials | None = None,
    keys: bool = True,
    key_fd: int | None = None,
    ready: asyncio.Event | None = None,
) -> ViewModel:
    """Show the station live until `q`, `stop` is set, or the task is cancelled.

    `fault_devices` (device id -> its faults, or faults -> params; `fault_menu(...)` builds
    it from a config) fills the `f` menu. Keys are read from `key_fd`
    (default stdin) only when `keys` is on and that is a terminal. `ready` is set once the view
    is subscribed. Returns the model (the last state seen).
    """
    from rich.live import Live

    model = model or ViewModel(root)
    controls = ViewControls(devices=dict(fault_devices or {}))
    stop = stop or asyncio.Event()
    console = console or Console()
    group: list[asyncio.TaskGroup] = []  # the running TaskGroup, for tasks started by keys

    async def publish(action: InjectFault) -> None:
        try:
            await publish_fault(
                broker,
                root,
                action.device_id,
                action.fault,
                action.clear,
                action.params,
                credentials,
            )
        except aiomqtt.MqttError as e:
            controls.message = f"fault not sent: {e}"

    def on_key(ch: str) -> None:
        action = controls.on_key(ch)
        if isinstance(action, Quit):
            stop.set()
        elif isinstance(action, InjectFault) and group:
            group[0].create_task(publish(action), name="view-fault")

    period_s = 1.0 / refresh_hz
    with (
        Live(
            render(model, controls),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=console.is_terminal,
        ) as live,
        _keys(on_key, (key_fd if key_fd is not None else _stdin_fd()) if keys else None) as (
            controls.active
        ),
        _logs_above_live(console.is_terminal),
    ):
        async with asyncio.TaskGroup() as tg:
            group.append(tg)
            rx = tg.create_task(
                follow_station(broker, root, model, credentials=credentials, ready=ready),
                name="view-mqtt",
            )
            while not stop.is_set():
                live.update(render(model, controls), refresh=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period_s):
                        await stop.wait()
            group.clear()
            rx.cancel()
        live.update(render(model, controls), refresh=True)
    return model
