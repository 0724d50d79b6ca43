"""A whole station under load, end to end: the real daemon against the simulated world.

    .venv/bin/python bench/station_load.py --slots 24 --duration 600 [--cpu-quota 0.25]

Processes: a private Mosquitto, `swapd sim` (chargers on Modbus TCP, packs over SLCAN/TCP, the
robot PLC on Modbus TCP, a vehicle asking for a swap over MQTT `cmd/start_swap` every
--arrival-s seconds) and `swapd run`, with a generated config of --slots slots whose telemetry
goes out at up to 10 Hz per slot (deadbands 0, min interval 0.1 s). After --warmup seconds the
bench measures for --duration seconds:

- from outside the daemon: its CPU (% of one core, utime+stime from /proc/PID/stat over the
  window), RSS (VmRSS, max of 1 s samples), the CCS period and jitter as the simulated packs
  receive them (recorded by the sim: sim/loadstats.py), CEM/CST/BMS timeouts seen by the packs,
  and the daemon's alarm events over MQTT (pack.bms_timeout, modbus.offline, charger.offline);
- from inside (SWAPD_PERF_OUT, edge/app/perf.py): Modbus cycle times, event-loop lag, GC pauses.

--cpu-quota F (slow-PC mode): the daemon runs in a cpu cgroup the bench creates (cgroup v1
cpu.cfs_period_us=10000 / cpu.cfs_quota_us=F*10000, or cgroup v2 cpu.max) and removes at exit,
pinned to CPU 0; the sim, the broker and the bench itself are pinned to CPU 1, and the sim's
own loop lag is reported (it must stay small for the figures to be the daemon's).

The last line printed is one JSON object (keys: daemon_cpu_pct, rss_mb, ccs_jitter_p99_ms,
ccs_period_p99_ms, modbus_cycle_p99_ms, loop_lag_p99_ms, gc_pause_max_ms, cem, cst, timeouts,
modbus_offline, and more).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.benchcfg import bench_config  # noqa: E402
from sim.ports import free_port  # noqa: E402

STATION = "load-01"
PREFIX = "swapstation/v1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 10_000


# ---- config ---------------------------------------------------------------------------------


def make_config(tmp: Path, slots: int, mqtt_port: int) -> Path:
    """config/station.yaml with `slots` slots and chargers on free ports, 10 Hz telemetry."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "config" / "station.yaml").read_text())
    doc["station"]["id"] = STATION
    doc["chargers"] = [
        {
            "id": f"ch{i:02d}",
            "host": "127.0.0.1",
            "port": 1,  # replaced by bench_config
            "unit_id": 1,
            "map": "builtin:charger-generic",
        }
        for i in range(1, slots + 1)
    ]
    doc["slots"] = [
        {
            "id": f"s{i:02d}",
            "charger": f"ch{i:02d}",
            "bus": {"interface": "slcan", "channel": "socket://127.0.0.1:1", "bitrate": 250000},
        }
        for i in range(1, slots + 1)
    ]
    # Every slot charges (no grid throttling), so every slot sends CCS and reads at full rate.
    doc["grid"]["cap_kw"] = 70 * slots
    tel = doc.setdefault("telemetry", {})
    tel["min_interval_s"] = 0.1
    tel["refresh_s"] = 0.1  # every slot goes out at 10 Hz, changed or not
    tel["deadbands"] = dict.fromkeys(
        ("grid_power_kw", "soc_pct", "voltage_v", "current_a", "power_kw"), 0.0
    ) | dict.fromkeys(("temp_max_c", "temp_min_c", "axes_mm"), 0.0)
    tel["outbox_path"] = str(tmp / "outbox.sqlite")
    tel["outbox_synchronous"] = "normal"
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "station.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return bench_config(src / "station.yaml", tmp / "run", bus="slcan", mqtt_port=mqtt_port)


# ---- processes ------------------------------------------------------------------------------


def before_exec(cpus: set[int] | None, nice: int) -> Callable[[], None] | None:
    """Affinity and niceness of a child, set before exec (its threads inherit both)."""
    if cpus is None and nice == 0:
        return None

    def setup() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            # With sched_autogroup_enabled, CFS first shares the CPUs between sessions, and a
            # task's nice only weighs inside its session: a session of its own, at that nice.
            os.setsid()
            with contextlib.suppress(OSError):
                Path("/proc/self/autogroup").write_text(str(nice))

    return setup


class Procs:
    """Child processes, stopped (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self, nice: int = 0) -> None:
        self.items: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.nice = nice

    def start(
        self, name: str, argv: list[str], log: Path, cpus: set[int] | None, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as err:
            p = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                preexec_fn=before_exec(cpus, self.nice),  # noqa: PLW1509
            )
        self.items.append((name, p))
        return p

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for _, p in reversed(self.items):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for name, p in self.items:
            codes[name] = p.returncode
            if p.stdout is not None:
                p.stdout.close()
        return codes


def start_broker(tmp: Path, procs: Procs, cpus: set[int] | None) -> int:
    workdir = tmp / "broker"
    workdir.mkdir(parents=True, exist_ok=True)  # mosquitto needs it before it starts
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        "user root" if os.geteuid() == 0 else "",
        "persistence false",
        "allow_anonymous true",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        f"listener {port} 127.0.0.1",
        "max_queued_messages 100000",
    ]
    conf.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    p = procs.start("broker", [binary, "-c", str(conf)], workdir / "stderr.log", cpus, {})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError("mosquitto exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start listening")


def wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"swapd run exited with {proc.returncode}")
        notify.settimeout(0.5)
        try:
            if b"READY=1" in notify.recv(4096):
                return
        except TimeoutError:
            continue
    raise RuntimeError("swapd run did not send READY=1")


# ---- measuring from outside -----------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_times() -> list[int]:
    """The machine's `cpu` line of /proc/stat (jiffies: user nice system idle iowait irq
    softirq steal ...)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def dump(pid: int, path: Path, timeout_s: float = 20.0) -> dict[str, Any]:
    """SIGUSR1 the process; return the dump it writes (the window since the previous one)."""
    before = orjson.loads(path.read_bytes())["seq"] if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
            doc: dict[str, Any] = orjson.loads(path.read_bytes())
            if doc["seq"] > before:
                return doc
        time.sleep(0.05)
    raise RuntimeError(f"no perf dump from pid {pid} in {path}")


class Cgroup:
    """A cpu cgroup with a CFS quota (v1 cpu controller, else v2 cpu.max); removed on close."""

    def __init__(self, quota: float, nice: int = 0) -> None:
        name = f"swapd-bench-{os.getpid()}"
        quota_us = max(1000, int(quota * CFS_PERIOD_US))
        # A task's niceness only weighs inside its group: the group itself competes with the
        # machine's other tasks by its own weight (nice 0 = 1024, x1.25 per step).
        shares = min(262144, int(1024 * 1.25 ** (-nice)))
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            self.version = 1
            self.path = CGROUP_V1 / name
            self.parent = CGROUP_V1
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
            (self.path / "cpu.shares").write_text(str(shares))
        elif "cpu" in (CGROUP_V2 / "cgroup.controllers").read_text().split():
            self.version = 2
            self.parent = CGROUP_V2
            with contextlib.suppress(OSError):
                (CGROUP_V2 / "cgroup.subtree_control").write_text("+cpu")
            self.path = CGROUP_V2 / name
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}")
            (self.path / "cpu.weight").write_text(str(max(1, min(10000, shares * 100 // 1024))))
        else:
            raise RuntimeError("no cgroup cpu controller (v1 cpu or v2 cpu.max) to confine to")
        self.quota_us = quota_us

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def stat(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                out[k] = int(v)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.parent / "cgroup.procs").write_text(pid)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # a process still leaving
        print(f"station_load: could not remove {self.path}", file=sys.stderr)


@contextlib.contextmanager
def confined(quota: float | None, nice: int = 0) -> Iterator[Cgroup | None]:
    if quota is None:
        yield None
        return
    cg = Cgroup(quota, nice)
    try:
        yield cg
    finally:
        cg.close()


# ---- MQTT listener (in the bench process) ---------------------------------------------------


class Feed:
    """Counts the daemon's events and telemetry over MQTT."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.alarms: Counter[str] = Counter()
        self.stops: Counter[str] = Counter()
        self.slot_msgs = 0
        self.msgs = 0
        self.slots_seen: set[str] = set()
        self.ready = asyncio.Event()

    def reset(self) -> None:
        self.events.clear()
        self.alarms.clear()
        self.stops.clear()
        self.slot_msgs = self.msgs = 0
        self.slots_seen.clear()

    async def run(self, port: int) -> None:
        import aiomqtt

        root = f"{PREFIX}/{STATION}"
        async with aiomqtt.Client("127.0.0.1", port, max_queued_incoming_messages=0) as c:
            await c.subscribe(f"{root}/event/#", qos=1)
            await c.subscribe(f"{root}/telemetry/#", qos=0)
            self.ready.set()
            async for m in c.messages:
                self.msgs += 1
                topic = m.topic.value
                if "/telemetry/slot/" in topic:
                    self.slot_msgs += 1
                    self.slots_seen.add(topic.rsplit("/", 1)[1])
                    continue
                if "/event/" not in topic:
                    continue
                kind = topic.split("/event/", 1)[1].replace("/", ".")
                self.events[kind] += 1
                try:
                    p = orjson.loads(bytes(m.payload))
                except orjson.JSONDecodeError:
                    continue
                d = p.get("details") if isinstance(p.get("details"), dict) else p
                if kind == "alarm.raised":
                    self.alarms[str(d.get("code"))] += 1
                elif kind == "charge.stopped":
                    self.stops[str(d.get("reason"))] += 1


# ---- the run --------------------------------------------------------------------------------


def full_packs(args: argparse.Namespace) -> int:
    """Full packs for the swaps of the run (one per vehicle), the rest charge: the sim
    seats them at 50-75 % (SWAPD_SIM_SOC), so they charge all through the run."""
    vehicles = int((args.warmup + args.duration) / args.arrival_s) + 1
    return max(0, min(int(args.slots) - 2, vehicles))


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    quota: float | None = args.cpu_quota
    daemon_cpus = {0} if quota is not None else None
    side_cpus = {1} if quota is not None else None
    if side_cpus is not None:
        os.sched_setaffinity(0, side_cpus)
    procs = Procs(args.nice)
    result: dict[str, Any] = {}
    with confined(quota, args.nice) as cg:
        try:
            port = start_broker(tmp, procs, side_cpus)
            cfg = make_config(tmp, args.slots, port)
            feed = Feed()
            feed_task = asyncio.create_task(feed.run(port), name="bench-feed")
            await asyncio.wait_for(feed.ready.wait(), 10)

            sim_out, perf_out = tmp / "sim-stats.json", tmp / "daemon-perf.json"
            sim = procs.start(
                "sim",
                [sys.executable, "-m", "edge", "sim", "--config", str(cfg)],
                tmp / "sim.log",
                side_cpus,
                {
                    "SWAPD_SIM_STATS": str(sim_out),
                    "SWAPD_SIM_ARRIVAL_S": str(args.arrival_s),
                    "SWAPD_SIM_SOC": f"50,75,{full_packs(args)}",
                },
            )
            assert sim.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 60)
            if not line or not orjson.loads(line).get("ready"):
                raise RuntimeError(f"swapd sim did not start: {(tmp / 'sim.log').read_text()}")

            notify_path = str(tmp / "notify.sock")
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(notify_path)
            daemon = procs.start(
                "daemon",
                [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                tmp / "daemon.log",
                daemon_cpus,
                {"SWAPD_PERF_OUT": str(perf_out), "NOTIFY_SOCKET": notify_path}
                | dict(args.daemon_env),
            )
            await asyncio.to_thread(wait_ready, notify, daemon, 60)
            if cg is not None:
                cg.add(daemon.pid)
            await asyncio.sleep(args.warmup)

            # ---- window --------------------------------------------------------------
            await asyncio.to_thread(dump, daemon.pid, perf_out)
            await asyncio.to_thread(dump, sim.pid, sim_out)
            feed.reset()
            pids = {"daemon": daemon.pid, "sim": sim.pid, "broker": procs.items[0][1].pid}
            c0 = {k: cpu_s(p) for k, p in pids.items()}
            cg0 = cg.stat() if cg is not None else {}
            m0 = cpu_times()
            t0 = time.monotonic()
            rss_max = 0.0
            bench_lag = 0.0  # the bench's own oversleep: a third witness of machine stalls
            end = t0 + args.duration
            while (now := time.monotonic()) < end:
                if daemon.poll() is not None or sim.poll() is not None:
                    raise RuntimeError("a process died during the run (see its log)")
                rss_max = max(rss_max, rss_mb(daemon.pid))
                step = min(1.0, end - now)
                await asyncio.sleep(step)
                bench_lag = max(bench_lag, time.monotonic() - now - step)
            c1 = {k: cpu_s(p) for k, p in pids.items()}
            m1 = cpu_times()
            t1 = time.monotonic()
            cg1 = cg.stat() if cg is not None else {}
            rss_max = max(rss_max, rss_mb(daemon.pid))
            # The window ends here: what the feed sees from now on (dumps, stop) is not counted.
            alarms, events = Counter(feed.alarms), Counter(feed.events)
            stops, slot_msgs, slots_seen = dict(feed.stops), feed.slot_msgs, len(feed.slots_seen)
            perf = await asyncio.to_thread(dump, daemon.pid, perf_out)
            simd = await asyncio.to_thread(dump, sim.pid, sim_out)
            wall = t1 - t0
            cpu = {k: (c1[k] - c0[k]) / wall * 100 for k in pids}
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
            notify.close()

            frames = simd.get("frames", {})
            bms_timeouts = sum(simd.get("bms_timeouts", {}).values())
            modbus = perf.get("modbus", {})
            # A charger going offline raises modbus.offline (and charger.offline for its slot):
            # one event, as the device owner counts it.
            offline = max(alarms["modbus.offline"], int(modbus.get("offline_events", 0)))
            result = {
                "daemon_cpu_pct": round(cpu["daemon"], 1),
                "rss_mb": round(rss_max, 1),
                "ccs_jitter_p99_ms": simd["ccs_jitter_ms"]["p99"],
                "ccs_period_p99_ms": simd["ccs_period_ms"]["p99"],
                "modbus_cycle_p99_ms": perf["samples"].get("modbus_cycle_ms", {}).get("p99", 0.0),
                "loop_lag_p99_ms": perf["loop_lag_ms"]["p99"],
                "gc_pause_max_ms": perf["gc_pause_ms"]["max"],
                "cem": int(frames.get("cem", 0)),
                "cst": int(frames.get("cst", 0)),
                "timeouts": bms_timeouts + alarms["pack.bms_timeout"],
                "modbus_offline": offline,
                # more detail
                "ccs_jitter_p50_ms": simd["ccs_jitter_ms"]["p50"],
                "ccs_jitter_max_ms": simd["ccs_jitter_ms"]["max"],
                "ccs_period_max_ms": simd["ccs_period_ms"]["max"],
                "ccs_periods": simd["ccs_period_ms"]["n"],
                "modbus_cycle_p50_ms": perf["samples"].get("modbus_cycle_ms", {}).get("p50", 0.0),
                "modbus_cycles": perf["samples"].get("modbus_cycle_ms", {}).get("n", 0),
                "loop_lag_max_ms": perf["loop_lag_ms"]["max"],
                "gc_pause_max_ms_by_gen": perf["gc_pause_max_ms_by_gen"],
                "sim_loop_lag_p99_ms": simd["loop_lag_ms"]["p99"],
                "sim_loop_lag_max_ms": simd["loop_lag_ms"]["max"],
                "sim_cpu_pct": round(cpu["sim"], 1),
                "broker_cpu_pct": round(cpu["broker"], 1),
                "cst_swap": int(frames.get("cst_swap", 0)),
                "cst_done": int(frames.get("cst_done", 0)),
                "bms_timeouts": simd.get("bms_timeouts", {}),
                "alarms": dict(alarms),
                "charge_stops": stops,
                "swaps_completed": events["swap.completed"],
                "swaps_failed": events["swap.failed"],
                "slot_telemetry_hz": round(slot_msgs / wall / max(1, args.slots), 2),
                "slots_publishing": slots_seen,
                "loop": perf.get("loop"),
                "gc_threshold": perf.get("gc_threshold"),
                "gc_frozen": perf.get("gc_frozen"),
                "gc_counts": perf.get("gc_counts"),
                "daemon_env": dict(args.daemon_env),
                "cpu_quota": quota,
                "nice": args.nice,
                "slots": args.slots,
                "duration_s": round(wall, 1),
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "machine_busy_pct": round(busy_pct(m0, m1), 1),
                "steal_pct": round(steal_pct(m0, m1), 2),
                "bench_lag_max_ms": round(bench_lag * 1000, 1),
            }
            if cg is not None:
                result["throttled_periods"] = cg1.get("nr_throttled", 0) - cg0.get(
                    "nr_throttled", 0
                )
                result["cgroup"] = f"v{cg.version} {cg.quota_us}/{CFS_PERIOD_US} us"
        finally:
            codes = procs.stop()
            if result:
                result["exit_codes"] = codes
    return result


def busy_pct(m0: list[int], m1: list[int]) -> float:
    """Share of all CPUs busy over the window (everyone's processes, not only ours)."""
    d = [b - a for a, b in zip(m0, m1, strict=True)]
    total = sum(d[:8]) or 1
    return (total - d[3] - d[4]) / total * 100


def steal_pct(m0: list[int], m1: list[int]) -> float:
    d = [b - a for a, b in zip(m0, m1, strict=True)]
    return d[7] / (sum(d[:8]) or 1) * 100


def report(r: dict[str, Any]) -> None:
    q = r["cpu_quota"]
    mode = f"daemon confined to {q:.2f} of CPU 0 ({r['cgroup']})" if q else "full speed"
    if r["nice"]:
        mode += f", nice {r['nice']}"
    print(
        f"station_load: {r['slots']} slots, {r['duration_s']:.0f} s measured, {mode}; daemon "
        f"loop {r['loop']}, gc threshold {r['gc_threshold']}, {r['gc_frozen']} objects frozen"
    )
    print(
        f"  daemon CPU {r['daemon_cpu_pct']:.1f} % of one core (goal < 25), RSS max "
        f"{r['rss_mb']:.1f} MB (goal < 80); sim {r['sim_cpu_pct']:.1f} %, broker "
        f"{r['broker_cpu_pct']:.1f} %"
    )
    print(
        f"  CCS at the packs: jitter p50 {r['ccs_jitter_p50_ms']:.2f} p99 "
        f"{r['ccs_jitter_p99_ms']:.2f} max {r['ccs_jitter_max_ms']:.1f} ms (goal p99 < 5); "
        f"period p99 {r['ccs_period_p99_ms']:.1f} max {r['ccs_period_max_ms']:.1f} ms "
        f"({r['ccs_periods']} periods)"
    )
    print(
        f"  Modbus cycle p50 {r['modbus_cycle_p50_ms']:.2f} p99 {r['modbus_cycle_p99_ms']:.2f} ms "
        f"(goal < 20); loop lag p99 {r['loop_lag_p99_ms']:.2f} max {r['loop_lag_max_ms']:.1f} ms "
        f"(goal < 5); GC pause max {r['gc_pause_max_ms']:.1f} ms {r['gc_pause_max_ms_by_gen']}"
    )
    print(
        f"  sim loop lag p99 {r['sim_loop_lag_p99_ms']:.2f} max {r['sim_loop_lag_max_ms']:.1f} ms"
    )
    print(
        f"  CEM {r['cem']}  CST {r['cst']} (+{r['cst_swap']} by swaps, {r['cst_done']} ended)  "
        f"timeouts {r['timeouts']}  Modbus offline {r['modbus_offline']}  alarms {r['alarms']}"
    )
    print(
        f"  swaps completed {r['swaps_completed']} failed {r['swaps_failed']}; slot telemetry "
        f"{r['slot_telemetry_hz']:.1f} msg/s per slot ({r['slots_publishing']} slots)"
    )
    print(
        f"  machine: load average {r['loadavg_1m']}, all CPUs {r['machine_busy_pct']:.0f} % busy "
        f"(steal {r['steal_pct']:.1f} %), the bench's own oversleep max "
        f"{r['bench_lag_max_ms']:.0f} ms"
    )
    if q:
        print(f"  throttled CFS periods: {r['throttled_periods']}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slots", type=int, default=24)
    ap.add_argument("--duration", type=float, default=600.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    ap.add_argument("--cpu-quota", type=float, help="confine the daemon to this share of a core")
    ap.add_argument("--arrival-s", type=float, default=180.0, help="seconds between vehicles")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the daemon, sim and broker (e.g. -20 on a machine shared with others)",
    )
    ap.add_argument(
        "--daemon-env",
        type=lambda t: tuple(t.split("=", 1)),
        action="append",
        default=[],
        metavar="K=V",
        help="environment of the daemon (levers: SWAPD_EVENT_LOOP=asyncio, SWAPD_GC_TUNE=0)",
    )
    args = ap.parse_args()
    if args.cpu_quota is not None and not 0 < args.cpu_quota <= 1:
        ap.error("--cpu-quota wants a fraction in (0, 1]")
    tmp = Path(tempfile.mkdtemp(prefix="swapd-load-"))

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C: children stopped, cgroup removed

    signal.signal(signal.SIGTERM, terminate)
    try:
        r = asyncio.run(measure(args, tmp))
    except KeyboardInterrupt:
        print("station_load: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if args.keep:
            print(f"station_load: work directory {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(r)
    print(orjson.dumps(r).decode())


if __name__ == "__main__":
    main()
