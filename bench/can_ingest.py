"""CAN ingest and CCS timing benchmark.

1. Baseline: python-can virtual bus -> Notifier -> AsyncBufferedReader, one bus, no decode.
2. Ingest: BCL frames blasted at N virtual buses, each owned by a BusOwner feeding a charger
   session in the charging phase (decode + ChargeRequest events). Frames sent vs decoded (none
   may be missing), frames/s, CPU per 1,000 frames (process CPU, all threads).
3. Cost per bus: threads and RSS for M idle virtual buses (Notifier thread each) and their idle
   CPU; the same for SLCAN buses (fd watched by the loop, no thread).
4. CCS jitter: 24 slots charging at once against 24 simulated packs in another process over
   SLCAN/TCP; CCS period measured at the bus owner's send time, p50/p99 of |period - 50 ms|.

Run: .venv/bin/python bench/can_ingest.py [--buses 24] [--frames 120000] [--idle-buses 200]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import can  # noqa: E402

from drivers.can.bus import BusOwner  # noqa: E402
from drivers.can.codec import CanFrame, default_codec  # noqa: E402
from drivers.can.config import CanBusConfig  # noqa: E402
from drivers.can.events import ChargeRequest, Phase, SessionEvent  # noqa: E402
from drivers.can.runner import ChargerLink  # noqa: E402
from drivers.can.session import ChargerLimits, ChargerMeasurements, SessionTimers  # noqa: E402
from sim.ports import free_port  # noqa: E402

LIMITS = ChargerLimits(max_voltage_v=750.0, min_voltage_v=150.0, max_current_a=250.0)
C = default_codec()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- 1. baseline ----------------------------------------------------------------------------


async def baseline(frames: int) -> float:
    loop = asyncio.get_running_loop()
    rx = can.Bus(interface="virtual", channel="bench-base")
    tx = can.Bus(interface="virtual", channel="bench-base")
    reader = can.AsyncBufferedReader()
    notifier = can.Notifier(rx, [reader], timeout=0.1, loop=loop)
    msg = can.Message(arbitration_id=0x181056F4, data=bytes.fromhex("D80FD00702"))
    t0 = time.perf_counter()
    got = 0
    sent = 0
    while got < frames:
        while sent < frames and sent - got < 2000:
            tx.send(msg)
            sent += 1
        await reader.get_message()
        got += 1
    dt = time.perf_counter() - t0
    await asyncio.to_thread(notifier.stop, 1.0)
    rx.shutdown()
    tx.shutdown()
    return frames / dt


# -- 2. ingest ------------------------------------------------------------------------------


def _to_charging(link: ChargerLink, now: float) -> None:
    """Script the BMS side (sans-I/O) until the session charges; frames out are discarded."""
    s = link.session
    s.start(now)
    s.handle_frame(CanFrame(0x182756F4, bytes.fromhex("A510")), now)

    def tp(pgn: int, payload: bytes) -> None:
        n = (len(payload) + 6) // 7
        s.handle_frame(
            CanFrame(
                0x1CEC56F4, bytes([0x10, len(payload), 0, n, 0xFF]) + pgn.to_bytes(3, "little")
            ),
            now,
        )
        for i in range(n):
            chunk = payload[i * 7 : i * 7 + 7].ljust(7, b"\xff")
            s.handle_frame(CanFrame(0x1CEB56F4, bytes([i + 1]) + chunk), now)

    tp(0x0200, C.encode("BRM", {"BRM_ProtocolVersion": 0x101, "BRM_BatteryType": 3}))
    tp(0x0600, C.encode("BCP", {"BCP_MaxChargeCurrent": -200.0, "BCP_MaxChargeVoltage": 400.0}))
    s.handle_frame(CanFrame(0x100956F4, b"\xaa"), now)
    s.tick(now)
    s.handle_frame(CanFrame(0x181056F4, bytes.fromhex("D80FD00702")), now)
    assert s.phase is Phase.CHARGING, s.phase


async def ingest(n_buses: int, frames: int) -> dict[str, float]:
    decoded = [0]

    def on_event(ev: SessionEvent) -> None:
        if isinstance(ev, ChargeRequest):
            decoded[0] += 1

    timers = SessionTimers(bcs_timeout_s=1e9, bcl_timeout_s=1e9)
    links = [
        ChargerLink(
            f"b{i}",
            CanBusConfig(interface="virtual", channel=f"bench-in-{i}"),
            LIMITS,
            on_event,
            timers=timers,
        )
        for i in range(n_buses)
    ]
    tasks = [asyncio.create_task(link.run(), name=f"link-{link.name}") for link in links]
    for link in links:
        await link.bus.opened.wait()
    now = links[0].clock.monotonic()
    for link in links:
        _to_charging(link, now)
    decoded[0] = 0
    blasters = [can.Bus(interface="virtual", channel=f"bench-in-{i}") for i in range(n_buses)]
    msg = can.Message(arbitration_id=0x181056F4, data=bytes.fromhex("D80FD00702"))
    per_bus = frames // n_buses
    total = per_bus * n_buses
    cpu0, t0 = time.process_time(), time.perf_counter()
    sent = 0
    while sent < total:
        # Keep a bounded backlog so we measure sustained throughput, not a queue fill.
        while sent < total and sent - decoded[0] < 4000:
            blasters[sent % n_buses].send(msg)
            sent += 1
        await asyncio.sleep(0)
    async with asyncio.timeout(60):
        while decoded[0] < total:
            await asyncio.sleep(0.001)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rx = sum(link.bus.counters.rx for link in links)
    bad = sum(link.bus.counters.unknown + link.bus.counters.malformed for link in links)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for b in blasters:
        b.shutdown()
    return {
        "buses": n_buses,
        "sent": total,
        "decoded": decoded[0],
        "missing": total - decoded[0],
        "rx_counted": rx,
        "bad": bad,
        "frames_per_s": total / dt,
        "cpu_ms_per_1000": cpu / total * 1e6,
    }


# -- 3. cost per bus ------------------------------------------------------------------------


async def idle_cost(n: int, kind: str) -> dict[str, float]:
    gc.collect()
    threads0, rss0 = threading.active_count(), rss_mb()
    proc = None
    if kind == "virtual":
        confs = [CanBusConfig(interface="virtual", channel=f"idle-{i}") for i in range(n)]
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim.devices.slcan_server", "--count", str(n)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert proc.stdout is not None
        ports = (await asyncio.to_thread(proc.stdout.readline)).split()[1:]
        confs = [CanBusConfig(interface="slcan", channel=f"socket://127.0.0.1:{p}") for p in ports]
    owners = [BusOwner(f"idle{i}", c) for i, c in enumerate(confs)]
    tasks = [asyncio.create_task(o.run(), name=f"idle-{o.name}") for o in owners]
    async with asyncio.timeout(60):
        for o in owners:
            await o.opened.wait()
    await asyncio.sleep(0.5)
    threads1, rss1 = threading.active_count(), rss_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(2.0)
    idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
    for t in tasks:
        t.cancel()
    t_stop = time.perf_counter()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop_s = time.perf_counter() - t_stop
    if proc is not None:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    return {
        "buses": n,
        "threads_per_bus": (threads1 - threads0) / n,
        "rss_kb_per_bus": (rss1 - rss0) * 1024 / n,
        "idle_cpu_pct_total": idle_cpu * 100,
        "stop_all_s": stop_s,
    }


# -- 4. CCS jitter over SLCAN across processes ---------------------------------------------


@contextlib.contextmanager
def private_broker() -> Iterator[int]:
    """A Mosquitto process on a free loopback port (the telemetry load for the CCS run)."""
    import shutil
    import socket
    import tempfile

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "m.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}persistence false\nallow_anonymous true\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\n"
        )
        broker = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield port
        finally:
            broker.terminate()
            broker.wait(10)


async def publish_slots(
    links: list[ChargerLink], port: int, state_dir: Path
) -> tuple[Any, asyncio.Task[None], asyncio.Task[None]]:
    """The daemon's telemetry link publishing every slot at 10 Hz while CCS runs."""
    from edge.telemetry.config import MqttConfig, TelemetryConfig
    from edge.telemetry.models import SlotTelemetry
    from edge.telemetry.service import Telemetry
    from tests.doubles import InMemoryTarget

    tel = Telemetry(
        "bench",
        MqttConfig(host="127.0.0.1", port=port),
        TelemetryConfig(outbox_path=state_dir / "outbox.sqlite", min_interval_s=0.0, deadbands={}),
        InMemoryTarget(),
    )
    run = asyncio.create_task(tel.run(), name="telemetry")

    async def feed() -> None:
        k = 0
        while True:
            k += 1
            for link in links:
                tel.update_slot(
                    link.name,
                    SlotTelemetry(
                        soc_pct=min(100.0, 30 + k * 0.01),
                        current_a=100.0 + k % 7,
                        voltage_v=380.0 + k % 5,
                        session_phase="charging",
                        charger_state="charging",
                    ),
                )
            await asyncio.sleep(0.1)

    return tel, run, asyncio.create_task(feed(), name="telemetry-feed")


async def ccs_jitter(n_slots: int, seconds: float, telemetry: bool = False) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        return await _ccs_jitter(n_slots, seconds, stack if telemetry else None)


async def _ccs_jitter(
    n_slots: int, seconds: float, stack: contextlib.ExitStack | None
) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.devices.slcan_server", "--count", str(n_slots), "--soc", "30"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        ports = line.split()[1:]
        links: list[ChargerLink] = []

        def handler(i: int):  # type: ignore[no-untyped-def]
            def on_event(ev: SessionEvent) -> None:
                if isinstance(ev, ChargeRequest):
                    links[i].update_measurements(ChargerMeasurements(380.0, ev.current_a))

            return on_event

        for i, p in enumerate(ports):
            conf = CanBusConfig(interface="slcan", channel=f"socket://127.0.0.1:{p}")
            links.append(ChargerLink(f"s{i}", conf, LIMITS, handler(i)))
        tasks = [asyncio.create_task(link.run(), name=f"link-{link.name}") for link in links]
        async with asyncio.timeout(30):
            for link in links:
                await link.bus.opened.wait()
        for link in links:
            link.start()
        async with asyncio.timeout(60):
            while not all(link.session.phase is Phase.CHARGING for link in links):
                await asyncio.sleep(0.05)
        tel_parts = None
        if stack is not None:
            import tempfile

            port = stack.enter_context(private_broker())
            state = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            tel_parts = await publish_slots(links, port, state)
            async with asyncio.timeout(10):
                await tel_parts[0].connected.wait()
        for link in links:
            link.bus.send_times = collections.deque()
        lag_ms: list[float] = []

        async def probe() -> None:
            # Same loop, same window: how late does a plain 50 ms sleeper wake up?
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.05)
                lag_ms.append((time.perf_counter() - t) * 1000 - 50.0)

        gc_pauses_ms: list[float] = []
        gc_t0 = [0.0]

        def gc_cb(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_t0[0] = time.perf_counter()
            else:
                gc_pauses_ms.append((time.perf_counter() - gc_t0[0]) * 1000)

        gc.callbacks.append(gc_cb)
        ptask = asyncio.create_task(probe(), name="lag-probe")
        cpu0 = time.process_time()
        load0 = os.getloadavg()[0]
        await asyncio.sleep(seconds)
        cpu = time.process_time() - cpu0
        ptask.cancel()
        await asyncio.gather(ptask, return_exceptions=True)
        gc.callbacks.remove(gc_cb)
        ccs_id = C.frame_id("CCS")
        jitter_ms: list[float] = []
        periods_ms: list[float] = []
        for link in links:
            assert link.bus.send_times is not None
            ts = [t for t, fid in link.bus.send_times if fid == ccs_id]
            for a, b in zip(ts, ts[1:], strict=False):
                periods_ms.append((b - a) * 1000)
                jitter_ms.append(abs((b - a) * 1000 - 50.0))
        phases_ok = all(link.session.phase is Phase.CHARGING for link in links)
        drops = sum(link.bus.counters.dropped for link in links)
        rx = sum(link.bus.counters.rx for link in links)
        published = 0.0
        if tel_parts is not None:
            tel, run, feed = tel_parts
            published = float(tel.stats().get("telemetry_published", 0) or 0)  # type: ignore[arg-type]
            feed.cancel()
            tel.stop()
            await asyncio.gather(feed, run, return_exceptions=True)
            tel.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "telemetry_msgs_per_s": published / seconds,
            "slots": n_slots,
            "ccs_frames": len(periods_ms) + len(links),
            "period_p50_ms": statistics.median(periods_ms),
            "jitter_p50_ms": pct(jitter_ms, 0.5),
            "jitter_p99_ms": pct(jitter_ms, 0.99),
            "jitter_max_ms": max(jitter_ms),
            "all_still_charging": float(phases_ok),
            "dropped": drops,
            "rx_frames_per_s": rx / seconds,
            "daemon_cpu_pct": cpu / seconds * 100,
            "loop_lag_p50_ms": pct(lag_ms, 0.5),
            "loop_lag_p99_ms": pct(lag_ms, 0.99),
            "machine_load_1min": load0,
            "gc_runs": len(gc_pauses_ms),
            "gc_pause_max_ms": max(gc_pauses_ms, default=0.0),
        }
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def show(title: str, d: dict[str, float]) -> None:
    print(f"== {title}")
    for k, v in d.items():
        print(f"  {k:22s} {v:12.3f}" if isinstance(v, float) else f"  {k:22s} {v:12d}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buses", type=int, default=24)
    ap.add_argument("--frames", type=int, default=120_000)
    ap.add_argument("--idle-buses", type=int, default=200)
    ap.add_argument("--slots", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the CCS part at this niceness (e.g. -10, as root), as a station would give "
        "its daemon CPU priority over other work on the box",
    )
    ap.add_argument(
        "--fifo",
        action="store_true",
        help="run the CCS part under SCHED_FIFO (root; systemd CPUSchedulingPolicy=fifo), to "
        "separate our own latency from a busy machine's run queue",
    )
    ap.add_argument("--only-ccs", action="store_true")
    ap.add_argument(
        "--telemetry",
        action="store_true",
        help="during the CCS run, publish every slot's telemetry at 10 Hz through a private Mosquitto",
    )
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, python-can {can.__version__}, cpus {os.cpu_count()}")
    if args.only_ccs:
        if args.nice:
            os.nice(args.nice)
        if args.fifo:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        policy = ", SCHED_FIFO" if args.fifo else ""
        show(
            f"CCS jitter: {args.slots} slots over SLCAN/TCP (nice {args.nice}{policy})",
            await ccs_jitter(args.slots, args.seconds, args.telemetry),
        )
        return
    base = await baseline(50_000)
    show(
        "baseline: virtual bus -> Notifier -> AsyncBufferedReader (1 bus, no decode)",
        {"frames_per_s": base},
    )
    runs = [await ingest(args.buses, args.frames) for _ in range(3)]
    fps = [r["frames_per_s"] for r in runs]
    cpu = [r["cpu_ms_per_1000"] for r in runs]
    r = runs[-1] | {
        "frames_per_s_median": statistics.median(fps),
        "frames_per_s_min": min(fps),
        "cpu_ms_per_1000_median": statistics.median(cpu),
        "missing_total": sum(x["missing"] for x in runs),
    }
    show(f"ingest: {args.buses} virtual buses, bus owner + decode + session (3 runs)", r)
    show(
        "idle cost: virtual buses (python-can Notifier thread each)",
        await idle_cost(args.idle_buses, "virtual"),
    )
    show(
        "idle cost: slcan buses (fd on the loop, no thread)",
        await idle_cost(min(args.idle_buses, 48), "slcan"),
    )
    if args.nice:
        os.nice(args.nice)
    if args.fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    show(
        f"CCS jitter: {args.slots} slots charging, packs in another process over SLCAN/TCP"
        f" (nice {args.nice}{', SCHED_FIFO' if args.fifo else ''})",
        await ccs_jitter(args.slots, args.seconds, args.telemetry),
    )
    print("goals: ingest >= 15000 frames/s with 0 missing; CCS jitter p99 < 5 ms")


if __name__ == "__main__":
    asyncio.run(main())
