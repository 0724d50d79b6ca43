"""Telemetry benchmark: a 24-slot station through a private Mosquitto to a subscriber process.

    .venv/bin/python bench/telemetry.py [--seconds 10]

Phases: (1) 24 slots updated at 10 Hz: messages/s and end-to-end latency (update_slot() call to
the subscriber's receipt; both sides read CLOCK_MONOTONIC); (2) pushed: 24 slots at 250 Hz
(6,000 updates/s), then as fast as the loop goes: sustained messages/s; (3) replay: events stored while offline, then connect: events/s at
the subscriber (default replay rate limit and unlimited); emit_event cost per outbox sync mode.
CPU % and RSS are of the station process only (the subscriber runs in its own process).
Goals: p99 < 50 ms, >= 5,000 msg/s pushed, replay >= 1,000 events/s, RSS < 120 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.ports import free_port  # noqa: E402

STATION = "bench-01"
ROOT = f"swapstation/v1/{STATION}"


# ---- subscriber process ---------------------------------------------------------------------


async def subscriber(port: int, topic: str) -> None:
    import aiomqtt

    records: list[tuple[str, Any, float]] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiomqtt.Client("127.0.0.1", port, max_queued_incoming_messages=0) as c:
        await c.subscribe(topic, qos=1)
        print("READY", flush=True)

        async def pump() -> None:
            async for m in c.messages:
                t = time.time()
                d = orjson.loads(m.payload)  # type: ignore[arg-type]
                key = d.get("msg_id") or (d.get("slot_id"), d.get("voltage_v"))
                records.append((m.topic.value, key, t))

        task = asyncio.create_task(pump())
        while True:
            line = (await reader.readline()).decode().strip()
            if line in ("", "quit"):
                break
            if line == "dump":
                sys.stdout.write(orjson.dumps(records).decode() + "\n")
                sys.stdout.flush()
                records = []
        task.cancel()


class Sub:
    """The subscriber in its own process: mosquitto_sub (C, cheap, so it is not the bottleneck)
    when installed, else a Python aiomqtt subscriber. Both stamp receipt with CLOCK_REALTIME."""

    def __init__(self, port: int, topic: str, out: Path) -> None:
        self.native = shutil.which("mosquitto_sub") is not None
        if self.native:
            self.out = out
            self._fh = out.open("wb")
            self._offset = 0
            self.p = subprocess.Popen(
                [
                    "mosquitto_sub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-t",
                    topic,
                    "-q",
                    "1",
                    "-F",
                    "%U %t %p",
                ],
                stdout=self._fh,
            )
            time.sleep(0.3)  # subscribed well before the phase starts
            return
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--subscriber", "--port", str(port), "--topic", topic],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.p.stdout is not None
        assert self.p.stdout.readline().strip() == b"READY"

    def dump(self) -> list[Any]:
        if self.native:
            self._fh.flush()
            with self.out.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            chunk = data[:end]
            self._offset += end
            recs = []
            for line in chunk.splitlines():
                t, topic, payload = line.split(b" ", 2)
                d = orjson.loads(payload)
                key = d.get("msg_id") or (d.get("slot_id"), d.get("voltage_v"))
                recs.append((topic.decode(), key, float(t)))
            return recs
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(b"dump\n")
        self.p.stdin.flush()
        out: list[Any] = orjson.loads(self.p.stdout.readline())
        return out

    def close(self) -> None:
        if self.native:
            self.p.terminate()
            self.p.wait(10)
            self._fh.close()
            return
        assert self.p.stdin is not None
        self.p.stdin.write(b"quit\n")
        self.p.stdin.flush()
        self.p.wait(10)


# ---- broker -----------------------------------------------------------------------------------


def start_broker(d: Path, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = d / "mosquitto.conf"
    conf.write_text(
        ("user root\n" if os.geteuid() == 0 else "")
        + f"persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n"
        + "max_queued_messages 100000\nset_tcp_nodelay true\n"
    )
    p = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


# ---- station side -----------------------------------------------------------------------------


class Usage:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = sum(os.times()[:2])

    def cpu_pct(self) -> float:
        return 100 * (sum(os.times()[:2]) - self.c0) / (time.monotonic() - self.t0)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def make(port: int, d: Path, name: str, **cfg: Any) -> Any:
    from edge.telemetry.config import MqttConfig, TelemetryConfig
    from edge.telemetry.service import Telemetry
    from tests.doubles import InMemoryTarget

    base: dict[str, Any] = {
        "outbox_path": d / f"{name}.sqlite",
        "min_interval_s": 0.0,
        "refresh_s": 3600.0,
    }
    base.update(cfg)
    mq = MqttConfig(host="127.0.0.1", port=port, backoff_initial_s=0.05, backoff_max_s=0.2)
    return Telemetry(STATION, mq, TelemetryConfig.model_validate(base), InMemoryTarget())


def slot(v: float) -> Any:
    from edge.telemetry.models import SlotTelemetry

    return SlotTelemetry(
        pack_id="PK-0001",
        soc_pct=55.0,
        voltage_v=v,
        current_a=120.0,
        power_kw=72.0,
        temp_max_c=31.0,
        temp_min_c=25.0,
        session_phase="charging",
        charger_state="running",
    )


async def run_phase_updates(
    tel: Any, sub: Sub, seconds: float, period_s: float | None
) -> dict[str, float]:
    sent: list[float] = [0.0]  # update time of round n (all 24 slots get voltage_v = n)
    counter = 0
    published0 = tel.telemetry_published
    usage = Usage()
    t_end = time.monotonic() + seconds
    next_tick = time.monotonic()
    while time.monotonic() < t_end:
        counter += 1
        sent.append(time.time())
        for i in range(24):
            tel.update_slot(f"s{i:02d}", slot(float(counter)))
        if period_s is None:
            await asyncio.sleep(0)
        else:
            next_tick += period_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    await asyncio.sleep(0.5)  # drain
    cpu = usage.cpu_pct()
    recs = sub.dump()
    first = len(sent) - counter
    lat = [
        (t - sent[int(k[1])]) * 1000
        for topic, k, t in recs
        if "/telemetry/slot/" in topic and first <= int(k[1]) < len(sent)
    ]
    n = len(lat)
    return {
        "published_per_s": (tel.telemetry_published - published0) / seconds,
        "updates_per_s": counter * 24 / seconds,
        "msgs_per_s": n / seconds,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": pct(lat, 0.99) if lat else float("nan"),
        "cpu_pct": cpu,
    }


async def replay_phase(port: int, d: Path, n: int, rate: float | None) -> dict[str, float]:
    cfg: dict[str, Any] = {"outbox_synchronous": "normal"}
    if rate is not None:
        cfg["replay_rate_per_s"] = rate
    tel = make(port, d, f"replay{rate}", **cfg)
    for i in range(n):
        tel.emit_event("swap.step", {"swap_id": "w1", "step": f"k{i}", "state": "done"})
    sub = Sub(port, f"{ROOT}/event/#", d / f"sub-replay{rate}.txt")
    usage = Usage()
    t0 = time.monotonic()
    task = asyncio.create_task(tel.run(), name="bench-telemetry")
    while tel.outbox.stored_bytes > 0 or tel.events_published < n:
        await asyncio.sleep(0.01)
    wall = time.monotonic() - t0
    cpu = usage.cpu_pct()
    recs: list[Any] = []
    deadline = time.monotonic() + 30
    while len({k for _, k, _ in recs}) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # the subscriber may still be catching up
        recs += sub.dump()
    sub.close()
    tel.stop()
    await task
    tel.close()
    t_first = min(t for _, _, t in recs)
    t_last = max(t for _, _, t in recs)
    ids = [k for _, k, _ in recs]
    assert len(set(ids)) == n, (len(set(ids)), n)
    return {
        "events": n,
        "events_per_s": n / (t_last - t_first),
        "connect_to_done_s": wall,
        "cpu_pct": cpu,
    }


def emit_cost(d: Path, sync: str, n: int) -> float:
    from edge.telemetry.outbox import Outbox, open_db

    ob = Outbox(open_db(d / f"emit-{sync}.sqlite", sync), 1 << 30)  # type: ignore[arg-type]
    body = orjson.dumps({"swap_id": "w1", "step": "lift", "state": "done"})
    t0 = time.perf_counter()
    for _ in range(n):
        ob.append("swap.step", "2026-01-01T00:00:00.000Z", body)
    return (time.perf_counter() - t0) / n * 1e6


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        port = free_port()
        broker = start_broker(d, port)
        try:
            base_rss = rss_mb()
            tel = make(port, d, "live")
            sub = Sub(port, f"{ROOT}/telemetry/slot/+", d / "sub-live.txt")
            task = asyncio.create_task(tel.run(), name="bench-telemetry")
            await asyncio.wait_for(tel.connected.wait(), 10)
            sub.dump()
            r10 = await run_phase_updates(tel, sub, seconds, 0.1)
            r250 = await run_phase_updates(tel, sub, max(3.0, seconds / 2), 0.004)
            rpush = await run_phase_updates(tel, sub, max(3.0, seconds / 2), None)
            sub.close()
            tel.stop()
            await task
            tel.close()
            rep_default = await replay_phase(port, d, 20_000, None)
            rep_unlim = await replay_phase(port, d, 20_000, 1e9)
            emit_full = emit_cost(d, "full", 500)
            emit_normal = emit_cost(d, "normal", 5000)
        finally:
            broker.kill()
            broker.wait()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind = "mosquitto_sub" if shutil.which("mosquitto_sub") else "Python aiomqtt"
    print(f"telemetry bench (station process; {kind} subscriber process; loopback Mosquitto)")
    print(
        f"  10 Hz x 24 slots : {r10['msgs_per_s']:8.0f} msg/s  latency p50 {r10['p50_ms']:.2f} ms"
        f"  p99 {r10['p99_ms']:.2f} ms  CPU {r10['cpu_pct']:.1f} %   (goal p99 < 50 ms)"
    )
    print(
        f"  250 Hz x 24 slots: {r250['msgs_per_s']:8.0f} msg/s received"
        f" ({r250['published_per_s']:.0f}/s published) from {r250['updates_per_s']:.0f}"
        f" updates/s  p50 {r250['p50_ms']:.2f} ms  p99 {r250['p99_ms']:.2f} ms"
        f"  CPU {r250['cpu_pct']:.1f} %   (goal >= 5,000 msg/s)"
    )
    print(
        f"  flat out         : {rpush['msgs_per_s']:8.0f} msg/s received"
        f" ({rpush['published_per_s']:.0f}/s published) from {rpush['updates_per_s']:.0f}"
        f" updates/s  p50 {rpush['p50_ms']:.2f} ms  p99 {rpush['p99_ms']:.2f} ms"
        f"  CPU {rpush['cpu_pct']:.1f} %  (updates coalesce: latest state wins)"
    )
    print(
        f"  replay (default 2,000/s limit): {rep_default['events_per_s']:8.0f} events/s"
        f"  ({rep_default['events']} events, CPU {rep_default['cpu_pct']:.1f} %)"
    )
    print(
        f"  replay (unlimited)            : {rep_unlim['events_per_s']:8.0f} events/s"
        f"  ({rep_unlim['events']} events, CPU {rep_unlim['cpu_pct']:.1f} %)"
        "   (goal >= 1,000 events/s)"
    )
    print(
        f"  emit_event outbox append: {emit_full:.0f} us (synchronous=full),"
        f" {emit_normal:.0f} us (normal)"
    )
    print(
        f"  RSS now {rss_mb():.1f} MB (at start {base_rss:.1f} MB), max {maxrss:.1f} MB"
        "   (goal < 120 MB)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--subscriber", action="store_true")
    ap.add_argument("--port", type=int)
    ap.add_argument("--topic")
    a = ap.parse_args()
    if a.subscriber:
        asyncio.run(subscriber(a.port, a.topic))
    else:
        asyncio.run(main(a.seconds))
