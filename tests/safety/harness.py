"""The composed station under faults, with the outside monitor watching (issue 12).

The simulated world (`sim.world.SimWorld`: chargers on Modbus TCP, packs on their CAN buses, the
robot PLC, vehicles asking for swaps) runs in this process so the monitor can read the devices'
own state. The daemon runs either in this process (`InProcessDaemon`, so tests can disable one of
our own seams with monkeypatch) or as a real `swapd run` child process (`ProcessDaemon`, so
SIGTERM, kill -9 and a full disk are the real thing). Both talk to the world over loopback only.

`run_schedule()` plays a `Schedule` of faults against it and returns what happened: faults
injected, violations, recoveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from drivers.core.clock import SystemClock
from edge.app.station import Station, build_station
from edge.cli.ctl import request
from edge.config import StationConfig, load_config
from sim.benchcfg import bench_config
from sim.world import SimWorld, SwapRefused, SwapRequester, in_process_requester, mqtt_requester
from tests.safety.monitor import Monitor, watch_status
from tests.swapd_proc import wait_ctl_ready

ROOT = Path(__file__).resolve().parents[2]

# ---- config ---------------------------------------------------------------------------------


def campaign_config(
    tmp: Path,
    *,
    slots: int = 4,
    bus: Literal["slcan", "virtual"] = "virtual",
    mqtt_port: int | None = None,
    speed: float = 20.0,
) -> Path:
    """The example station cut to `slots` slots, naive charging policy (charging does not depend
    on the hour), on free loopback ports, state under `tmp`."""
    src_dir = tmp / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = yaml.safe_load((ROOT / "config" / "station.yaml").read_text())
    doc["slots"] = doc["slots"][:slots]
    used = {s["charger"] for s in doc["slots"]}
    doc["chargers"] = [c for c in doc["chargers"] if c["id"] in used]
    doc["grid"]["policy"] = "naive"
    doc["station"]["stop_deadline_s"] = 3
    doc["mqtt"]["enabled"] = mqtt_port is not None
    src = src_dir / "station.yaml"  # maps and step graph stay `builtin:` names
    src.write_text(yaml.safe_dump(doc, sort_keys=False))
    return bench_config(
        src,
        tmp / "bench",
        bus=bus,
        mqtt_port=mqtt_port,
        mqtt_protocol="5" if mqtt_port else None,
        speed=speed,
    )


# ---- daemons --------------------------------------------------------------------------------


class InProcessDaemon:
    """build_station in this event loop. SIGTERM is `Station.stop()`; there is no kill -9."""

    can_kill = False

    def __init__(self, cfg: StationConfig) -> None:
        self.cfg = cfg
        self.station: Station | None = None
        self.task: asyncio.Task[None] | None = None
        self.starts = 0

    async def start(self) -> None:
        self.station = build_station(self.cfg, SystemClock())
        self.task = asyncio.create_task(self.station.run(), name="station")
        self.starts += 1

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def sigterm(self) -> int | None:
        if self.station is None or self.task is None:
            return None
        self.station.stop()
        try:
            async with asyncio.timeout(20):
                await self.task
        except Exception:  # noqa: BLE001 - the exit is what we report
            return 1
        return 0

    async def kill(self) -> int | None:
        raise NotImplementedError("in-process daemon: use ProcessDaemon for kill -9")

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def requester(self) -> SwapRequester:
        async def request_swap(announcement: dict[str, str]) -> None:
            if self.station is None or not self.alive():
                raise SwapRefused("daemon down")
            await in_process_requester(self.station.swap.coordinator)(announcement)

        return request_swap

    def ctl(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        return request(str(self.cfg.station.ctl_socket), command, params)

    def fill_disk(self, full: bool) -> None:
        raise NotImplementedError("in-process daemon: a full disk needs ProcessDaemon")


class ProcessDaemon:
    """`swapd run --config PATH` as a child process: real SIGTERM, kill -9 and exit codes. A
    full disk is RLIMIT_FSIZE on the running child (writes that grow a file fail with EFBIG, as
    on a full file system; SIGXFSZ is ignored so the write fails instead of killing it)."""

    can_kill = True

    def __init__(self, cfg: StationConfig, log: Path) -> None:
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []

    async def start(self) -> None:
        swapd = Path(sys.executable).with_name("swapd")

        def child_setup() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(swapd), "run", "--config", str(self.cfg.source)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=child_setup,  # noqa: PLW1509 - one signal disposition, no threads yet
            )
        self.starts += 1
        try:
            await wait_ctl_ready(self.proc, Path(self.cfg.station.ctl_socket), 30)
        except TimeoutError:
            raise TimeoutError(f"no ctl answer 30 s after start; {await self.stacks()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _wait(self, timeout_s: float) -> int | None:
        assert self.proc is not None
        proc = self.proc
        async with asyncio.timeout(timeout_s):
            while proc.poll() is None:
                await asyncio.sleep(0.05)
        self.exits.append(proc.returncode)
        return proc.returncode

    async def sigterm(self) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self._wait(20)
        except TimeoutError:
            raise TimeoutError(f"still running 20 s after SIGTERM; {await self.stacks()}") from None

    async def stacks(self) -> str:
        """The daemon's thread stacks (SIGUSR2, faulthandler) and its log's last lines."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR2)
            await asyncio.sleep(1.0)
        lines = self.log.read_text(errors="replace").splitlines()[-200:]
        return "daemon log tail:\n" + "\n".join(lines)

    async def kill(self) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        self.proc.kill()
        return await self._wait(10)

    async def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)

    def requester(self, cfg: StationConfig) -> SwapRequester:
        from sim.faults import station_mqtt

        return mqtt_requester(station_mqtt(cfg))

    def ctl(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        return request(str(self.cfg.station.ctl_socket), command, params)

    def fill_disk(self, full: bool) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        state = Path(self.cfg.station.state_dir)
        biggest = max((p.stat().st_size for p in state.rglob("*") if p.is_file()), default=0)
        limit = biggest + 1 if full else resource.RLIM_INFINITY
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (limit, limit))


Daemon = InProcessDaemon | ProcessDaemon


# ---- schedules ------------------------------------------------------------------------------

CHARGER_FAULTS = ("refuse_write", "exception", "silent", "frozen", "out_of_range")
PACK_FAULTS = (
    "garbage",
    "soc_unsupported",
    "bad_remaining",
    "hot_probe",
    "cell_high",
    "pack_over_voltage",
    "over_temperature",
    "insulation",
    "silent",
    "broken_tp",
)
PLC_FAULTS = ("stuck_step", "frozen_heartbeat", "emergency_stop", "light_curtain")
DAEMON_FAULTS = ("sigterm", "kill", "full_disk")
SWAP_STEPS = ("fetch", "give", "take", "store", "lower_pack", "raise_and_seat", "lock")
KINDS: tuple[tuple[str, str], ...] = (
    *(("charger", f) for f in CHARGER_FAULTS),
    *(("pack", f) for f in PACK_FAULTS),
    *(("plc", f) for f in PLC_FAULTS),
    *(("daemon", f) for f in DAEMON_FAULTS),
)


@dataclass(frozen=True)
class FaultEvent:
    at_s: float  # seconds into the schedule
    device: str  # charger / pack / plc / daemon
    fault: str
    target: str = ""  # charger id, slot id, or a swap step name for daemon faults ("" = now)
    duration_s: float = 5.0

    def __str__(self) -> str:
        where = f"@{self.target}" if self.target else ""
        return f"{self.at_s:.1f}s {self.device}.{self.fault}{where} for {self.duration_s:.1f}s"


@dataclass(frozen=True)
class Schedule:
    seed: int
    length_s: float
    faults: tuple[FaultEvent, ...]


def make_schedule(
    seed: int,
    cfg: StationConfig,
    *,
    length_s: float = 120.0,
    n_faults: tuple[int, int] = (3, 8),
    kinds: tuple[tuple[str, str], ...] = KINDS,
    can_kill: bool = True,
    each_once: bool = False,
) -> Schedule:
    """A random schedule from `seed` alone (the replay command needs nothing else). With
    `each_once`, every kind in `kinds` exactly once (times and targets still from the seed)."""
    rng = random.Random(seed)
    usable = [k for k in kinds if can_kill or k[0] != "daemon"]
    picks = (
        list(usable) if each_once else [rng.choice(usable) for _ in range(rng.randint(*n_faults))]
    )
    chargers = [c.id for c in cfg.chargers]
    slots = [s.id for s in cfg.slots]
    out = []
    for device, fault in picks:
        at = round(rng.uniform(3.0, max(4.0, length_s - 15.0)), 1)
        dur = round(rng.uniform(2.0, 12.0), 1)
        target = ""
        if device == "charger":
            target = rng.choice(chargers)
        elif device == "pack":
            target = rng.choice(slots)
        elif device == "plc" and fault == "stuck_step":
            target = rng.choice(("fetch", "store", "give", "take"))
        elif device == "daemon" and fault in ("sigterm", "kill") and rng.random() < 0.6:
            target = rng.choice(SWAP_STEPS)  # at the start of that swap step
        out.append(FaultEvent(at, device, fault, target, dur))
    return Schedule(seed, length_s, tuple(sorted(out, key=lambda f: f.at_s)))


@dataclass
class Outcome:
    seed: int
    injected: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    recoveries: int = 0
    not_recovered: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    swaps_served: int = 0
    wall_s: float = 0.0
    station_s: float = 0.0


# ---- running it -----------------------------------------------------------------------------


@dataclass
class Composed:
    cfg: StationConfig
    world: SimWorld
    daemon: Daemon
    monitor: Monitor
    final_stop: str | None = None  # what went wrong when the schedule's end stopped the daemon


@contextlib.asynccontextmanager
async def composed(
    path: Path,
    *,
    process: bool = False,
    speed: float = 20.0,
    seed: int = 1,
    broker: tuple[str, int] | None = None,
    vehicles: bool = True,
    arrival_rate_per_hour: float = 0.0,
    empty_slots: int = 1,
    soc_range_pct: tuple[float, float] = (60.0, 97.0),
) -> AsyncIterator[Composed]:
    """The world, the daemon and the monitor, all running. The monitor polls throughout."""
    cfg = load_config(path)
    world = SimWorld.from_config(
        cfg, speed=speed, seed=seed, empty_slots=empty_slots, soc_range_pct=soc_range_pct
    )
    daemon: Daemon = (
        ProcessDaemon(cfg, path.parent / "daemon.log") if process else InProcessDaemon(cfg)
    )
    requester = daemon.requester(cfg) if isinstance(daemon, ProcessDaemon) else daemon.requester()
    monitor = Monitor(world)
    monitor.daemon_alive = daemon.alive
    tasks: list[asyncio.Task[Any]] = []
    rate = arrival_rate_per_hour
    async with world.running(
        requester if vehicles else None,
        arrivals=rate > 0,
        rate_per_hour=rate,
        first_arrival_s=2.0,
    ):
        if broker is not None:
            root = f"{cfg.mqtt.prefix}/{cfg.station.id}"
            tasks.append(asyncio.create_task(watch_status(monitor, *broker, root)))
        try:
            c = Composed(cfg, world, daemon, monitor)
            await daemon.start()
            tasks.append(asyncio.create_task(monitor.run(), name="monitor"))
            yield c
        finally:
            monitor.expect_down = True
            try:
                code = await daemon.sigterm()
                if code not in (0, None):
                    c.final_stop = f"exit code {code}"
                    if isinstance(daemon, ProcessDaemon):
                        c.final_stop += f"; {await daemon.stacks()}"
            except Exception as e:  # noqa: BLE001 - reported with the schedule's outcome
                c.final_stop = f"{type(e).__name__}: {e}"
            await daemon.close()  # a daemon that did not stop in time leaks into no later test
            await cancel_all(tasks)


async def cancel_all(tasks: list[asyncio.Task[Any]], within_s: float = 30.0) -> None:
    """Cancel `tasks` and wait for their end, cancelling again while they run: a task whose
    cancel a library swallowed (3.11's `wait_for` in aiomqtt) would otherwise be waited for
    forever. A campaign worker once hung 58 min after its daemon had stopped (seed 102389, no
    stacks kept); the status watcher's aiomqtt calls are the one such place left here."""
    async with asyncio.timeout(within_s):
        while pending := [t for t in tasks if not t.done()]:
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=1.0)
    await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_step(c: Composed, step: str, timeout_s: float) -> bool:
    seen = asyncio.Event()

    def observe(m: Any) -> None:
        if m.step == step:
            seen.set()

    c.world.plc.step_observers.append(observe)
    try:
        async with asyncio.timeout(timeout_s):
            await seen.wait()
        return True
    except TimeoutError:
        return False
    finally:
        c.world.plc.step_observers.remove(observe)


async def _restart(c: Composed, out: Outcome, why: str) -> None:
    await c.daemon.start()
    if c.cfg.mqtt.enabled:
        # Down until the new daemon's birth message: before it the retained status is still
        # the old one's "offline" (a watcher that reconnects meanwhile is sent it again).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while c.monitor.status_online is not True:
                    await asyncio.sleep(0.05)
    else:
        c.monitor.status_online = None
    c.monitor.expect_down = False
    out.recoveries += 1
    del why


SKIPPED = object()


async def _apply(c: Composed, f: FaultEvent, out: Outcome) -> Callable[[], Any] | object | None:
    """Inject one fault; return how to clear it (None: nothing to clear; SKIPPED: the fault
    could not apply, e.g. a pack fault on an empty slot)."""
    w = c.world
    if f.device == "charger":
        sim = w.chargers[f.target]
        # refuse_write: the next output-off write (enable = 0) refused once (outcome 1).
        name = "refuse_write:enable:0" if f.fault == "refuse_write" else f.fault
        sim.apply_fault(name, True, None)
        return lambda: sim.apply_fault(name, False, None)
    if f.device == "pack":
        seat = w.seats[f.target]
        if seat.core is None:
            # A swap emptied it since the schedule was drawn: the next seated slot instead.
            order = sorted(w.seats)
            i = order.index(f.target)
            other = next(
                (s for s in order[i + 1 :] + order[:i] if w.seats[s].core is not None), None
            )
            if other is None:
                out.notes.append(f"{f}: no pack seated anywhere, skipped")
                return SKIPPED
            out.notes.append(f"{f}: slot empty, injected on {other}")
            seat = w.seats[other]
        from sim.devices.pack import Fault

        seat.inject(Fault(f.fault).value, {})
        return lambda: seat.clear(Fault(f.fault).value)
    if f.device == "plc":
        plc = w.plc
        if f.fault == "emergency_stop":
            plc.emergency_stop(True)

            def reset_estop() -> None:
                plc.emergency_stop(False)
                with contextlib.suppress(OSError, ValueError):
                    c.daemon.ctl("reset-fault", {})

            return reset_estop
        if f.fault == "light_curtain":
            plc.break_curtain(True)
            return lambda: plc.break_curtain(False)
        if f.fault == "frozen_heartbeat":
            plc.freeze(True)
            return lambda: plc.freeze(False)
        if f.fault == "stuck_step":
            plc.inject_stuck("rack", f.target)
            return lambda: plc.faults.stuck.discard(("rack", f.target))
    if f.device == "daemon":
        if f.target and not await _wait_step(c, f.target, 20.0):
            out.notes.append(f"{f}: step not seen in 20 s, injected now")
        if f.fault == "full_disk":
            c.daemon.fill_disk(True)
            return lambda: c.daemon.fill_disk(False)
        c.monitor.expect_down = True
        c.monitor.status_online = None  # only the next daemon's birth message counts
        code = await (c.daemon.kill() if f.fault == "kill" else c.daemon.sigterm())
        if f.fault == "sigterm" and code not in (0, None):
            out.violations.append(f"I4 daemon: SIGTERM exit code {code}, want 0")
            if isinstance(c.daemon, ProcessDaemon):
                out.notes.append(f"{f}: exit {code}; {await c.daemon.stacks()}")
        await _restart(c, out, f.fault)
        return None
    raise ValueError(f"unknown fault {f}")


async def run_schedule(c: Composed, sched: Schedule) -> Outcome:
    """Play the schedule (its times are station seconds = wall seconds here: protocol timers run
    in real time), then let the station settle; the monitor watches all along. Each fault runs
    as its own task, so one waiting for a swap step does not hold the others back."""
    out = Outcome(sched.seed)
    t0 = time.monotonic()

    async def play(f: FaultEvent) -> None:
        await asyncio.sleep(max(0.0, f.at_s - (time.monotonic() - t0)))
        try:
            clear = await _apply(c, f, out)
        except Exception as e:  # noqa: BLE001 - a harness failure is reported, not hidden
            out.not_recovered.append(f"{f}: harness {type(e).__name__}: {e}")
            return
        if clear is SKIPPED:
            return
        out.injected.append(str(f))
        if callable(clear):
            await asyncio.sleep(f.duration_s)
            clear()
            if c.monitor.expect_down:
                # A daemon fault holds it down on purpose: judge this fault once it is back.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(60):
                        while c.monitor.expect_down:
                            await asyncio.sleep(0.1)
            if c.daemon.alive():
                out.recoveries += 1
            else:
                out.not_recovered.append(f"{f}: daemon down after the fault cleared")

    # One daemon fault at a time: a restart must not race another kill.
    tasks = [asyncio.create_task(play(f)) for f in sched.faults if f.device != "daemon"]
    daemon_faults = [f for f in sched.faults if f.device == "daemon"]

    async def daemon_track() -> None:
        for f in daemon_faults:
            await play(f)

    tasks.append(asyncio.create_task(daemon_track()))
    try:
        async with asyncio.timeout(sched.length_s + 90.0):
            while time.monotonic() - t0 < sched.length_s or not all(t.done() for t in tasks):
                if not c.daemon.alive() and not c.monitor.expect_down:
                    break  # I4: the monitor has it
                await asyncio.sleep(0.05)
    except TimeoutError:
        out.not_recovered.append("schedule did not finish in time")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    c.monitor.check()
    out.violations += [f"{v} (at {v.at_s - t0:.1f} s)" for v in c.monitor.violations]
    if out.violations and isinstance(c.daemon, ProcessDaemon):
        # What the daemon said then: a violation that does not replay is read from this.
        alive = (
            "running" if c.daemon.alive() else f"exited {c.daemon.proc and c.daemon.proc.poll()}"
        )
        tail = c.daemon.log.read_text(errors="replace").splitlines()[-80:]
        out.notes.append(f"daemon {alive}, exits {c.daemon.exits}; log tail:\n" + "\n".join(tail))
    out.swaps_served = c.world.stats.vehicles_served
    out.wall_s = time.monotonic() - t0
    out.station_s = out.wall_s
    return out


def replay_command(seed: int, process: bool) -> str:
    mode = "" if process else " --in-process"
    return f".venv/bin/python bench/fault_campaign.py --runs 1 --seed {seed}{mode}"


async def one_schedule(
    tmp: Path,
    seed: int,
    *,
    process: bool = True,
    length_s: float = 120.0,
    broker: tuple[str, int] | None = None,
    slots: int = 4,
    speed: float = 20.0,
    n_faults: tuple[int, int] = (3, 8),
    kinds: tuple[tuple[str, str], ...] = KINDS,
    each_once: bool = False,
) -> tuple[Schedule, Outcome]:
    """A fresh station (own state dir and ports), one schedule from `seed`, the monitor on."""
    path = campaign_config(
        tmp, slots=slots, bus="slcan" if process else "virtual", mqtt_port=broker and broker[1]
    )
    cfg = load_config(path)
    sched = make_schedule(
        seed,
        cfg,
        length_s=length_s,
        n_faults=n_faults,
        kinds=kinds,
        can_kill=process,
        each_once=each_once,
    )
    async with composed(
        path,
        process=process,
        speed=speed,
        seed=seed,
        broker=broker,
        arrival_rate_per_hour=360.0 / speed,  # a vehicle every ~10 s of wall time
    ) as c:
        out = await run_schedule(c, sched)
    if c.final_stop is not None:  # I4 too: SIGTERM at the schedule's end must exit 0 in time
        out.violations.append("I4 daemon: SIGTERM at the end did not exit 0")
        out.notes.append(f"end of schedule: {c.final_stop}")
    return sched, out
