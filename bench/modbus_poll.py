"""Modbus polling benchmark: 24 simulated chargers + 1 PLC-like device polled at 10 Hz.

The simulators run in a child process (one pymodbus TCP server per device on loopback), so the
CPU figure is the station side only: link + device owners + one consumer task per device
awaiting every update, as the slot controllers do. Prints cycle time p50/p99 (request start to
snapshot), requests per device per cycle, and CPU % of one core.

    .venv/bin/python bench/modbus_poll.py [--duration 10] [--chargers 24] [--map generic|vendorb]
        [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from drivers.core.clock import SystemClock  # noqa: E402
from drivers.modbus import DeviceState, ModbusNetwork, ModbusTcpEndpoint  # noqa: E402
from sim.ports import LoopbackPorts  # noqa: E402
from tests.doubles import RecordingAlarmSink  # noqa: E402

# The robot-PLC stand-in: a map of the bench's own (status words incl. the interlock inputs
# packed in a bitfield, axis positions, a heartbeat), one read per cycle plus the heartbeat.
PLC_MAP = """\
name: bench-plc
device: plc
poll_groups:
  fast: {period_s: 0.1}
  slow: {period_s: 10.0}
points:
  sequence_state: {table: input, address: 0, type: u16}
  step: {table: input, address: 1, type: u16}
  axis_x_mm: {table: input, address: 2, type: i32}
  axis_y_mm: {table: input, address: 4, type: i32}
  axis_z_mm: {table: input, address: 6, type: i32}
  fault_word: {table: input, address: 8, type: bitfield}
  interlocks:
    table: input
    address: 9
    type: bitfield
    bits: {0: estop_ok, 1: curtain_clear, 2: doors_closed, 3: vehicle_hv_off, 4: vehicle_immobilised}
  heartbeat: {table: holding, address: 20, type: u16, access: rw, group: slow}
watchdog: {point: heartbeat, period_s: 1.0, timeout_s: 5.0}
"""


def free_ports(n: int) -> list[int]:
    ports = LoopbackPorts()
    try:
        return [ports.take() for _ in range(n)]
    finally:
        ports.close()


async def serve(spec_file: str) -> None:
    from sim.devices.charger import ChargerSimSpec, run_charger_sims

    specs = json.loads(Path(spec_file).read_text())
    sims = [ChargerSimSpec(d["id"], d["map"], port=d["port"]) for d in specs]
    async with run_charger_sims(sims, speed=1.0, step_s=0.5):
        print("ready", flush=True)
        await asyncio.Event().wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def baseline(
    net: ModbusNetwork, specs: list[dict[str, Any]], duration: float
) -> tuple[float, list[float]]:
    """The same block reads and watchdog writes with bare pymodbus clients, no swapd layer."""
    loop = asyncio.get_running_loop()
    lat_ms: list[float] = []
    clients = []
    for d in specs:
        c = AsyncModbusTcpClient("127.0.0.1", port=d["port"], reconnect_delay=0)
        await c.connect()
        clients.append(c)

    async def poll(i: int, c: AsyncModbusTcpClient, dev: Any) -> None:
        fns = {
            "holding": c.read_holding_registers,
            "input": c.read_input_registers,
            "coil": c.read_coils,
            "discrete": c.read_discrete_inputs,
        }
        await asyncio.sleep(0.1 * i / len(clients))
        k, nxt = 0, loop.time()
        wd = dev.map.points[dev.map.watchdog.point] if dev.map.watchdog else None
        while True:
            groups = (
                ["fast"] + (["control"] if k % 10 == 0 else []) + (["slow"] if k % 100 == 0 else [])
            )
            for g in groups:
                for b in dev.plan.get(g, []):
                    t = loop.time()
                    await fns[b.table](b.start, count=b.count, device_id=1)
                    lat_ms.append((loop.time() - t) * 1000)
            if wd is not None and k % 10 == 0:
                await c.write_register(wd.address, k & 0x7FFF, device_id=1)
            k += 1
            nxt += 0.1
            await asyncio.sleep(max(0.0, nxt - loop.time()))

    tasks = [
        asyncio.create_task(poll(i, c, dev), name=f"bench-baseline-{i}")
        for i, (c, dev) in enumerate(zip(clients, net.devices.values(), strict=True))
    ]
    await asyncio.sleep(1.0)
    lat_ms.clear()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.sleep(duration)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        c.close()
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (t1 - t0) * 100
    return cpu, lat_ms


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="swapd-bench-"))
    plc_map = tmp / "bench-plc.yaml"
    plc_map.write_text(PLC_MAP)
    charger_map = ROOT / "drivers" / "modbus" / "maps" / f"charger-{args.map}.yaml"
    n = args.chargers + 1
    ports = free_ports(n)
    specs = [
        {"id": f"charger{i + 1:02d}", "map": str(charger_map), "port": ports[i]}
        for i in range(args.chargers)
    ]
    specs.append({"id": "plc", "map": str(plc_map), "port": ports[-1]})
    spec_file = tmp / "specs.json"
    spec_file.write_text(json.dumps(specs))
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("simulator process failed to start")
        endpoints = [
            ModbusTcpEndpoint(id=d["id"], host="127.0.0.1", port=d["port"], map=d["map"])
            for d in specs
        ]
        net = ModbusNetwork(
            endpoints, config_dir=tmp, clock=SystemClock(), alarms=RecordingAlarmSink()
        )
        cycle_ms: list[float] = []
        measuring = False

        async def consume(dev_id: str) -> None:
            async for snap in net.devices[dev_id].updates():
                if measuring and snap.state is DeviceState.ONLINE:
                    cycle_ms.append(snap.cycle_s * 1000)

        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(net.run(), name="bench-modbus")
            consumers = [
                tg.create_task(consume(d), name=f"bench-consumer-{d}") for d in net.devices
            ]
            async with asyncio.timeout(10):
                for dev in net.devices.values():
                    await dev.online.wait()
            for dev_id in net.devices:  # a charging slot: setpoints written and verified
                if dev_id != "plc":
                    d = net.devices[dev_id]
                    await d.write("voltage_setpoint_v", 400.0)
                    await d.write("current_limit_a", 100.0)
                    await d.write("enable", True)
            await asyncio.sleep(1.0)  # warm-up
            before = {k: (d.counters.requests, d.counters.cycles) for k, d in net.devices.items()}
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.monotonic()
            measuring = True
            await asyncio.sleep(args.duration)
            measuring = False
            t1 = time.monotonic()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            runner.cancel()
            for c in consumers:
                c.cancel()
        user = (r1.ru_utime - r0.ru_utime) / (t1 - t0) * 100
        system = (r1.ru_stime - r0.ru_stime) / (t1 - t0) * 100
        cpu = user + system
        rpc = {
            k: (d.counters.requests - before[k][0]) / max(1, d.counters.cycles - before[k][1])
            for k, d in net.devices.items()
        }
        charger_rpc = [v for k, v in rpc.items() if k != "plc"]
        cycles = sum(d.counters.cycles - before[k][1] for k, d in net.devices.items())
        errors = sum(
            d.counters.timeouts + d.counters.malformed + d.counters.exception_responses
            for d in net.devices.values()
        )
        print(
            f"modbus_poll: {args.chargers} chargers ({args.map} map) + 1 PLC stand-in at 10 Hz, TCP loopback,"
        )
        print(
            f"  simulators in a separate process; {args.duration:.0f} s measured, {cycles} device cycles, {errors} errors"
        )
        print(
            f"  cycle time   p50 {statistics.median(cycle_ms):.2f} ms  p99 {pct(cycle_ms, 0.99):.2f} ms  "
            f"max {max(cycle_ms):.2f} ms   (goal p99 < 20 ms)"
        )
        print(
            f"  requests/device/cycle  chargers mean {statistics.mean(charger_rpc):.2f} max {max(charger_rpc):.2f}, "
            f"plc {rpc['plc']:.2f}   (goal <= 2)"
        )
        print(
            f"  cycles/s {cycles / (t1 - t0):.0f}   CPU {cpu:.1f} % of one core "
            f"(user {user:.1f} + system {system:.1f})   (goal < 15 %)"
        )
        try:
            base_cpu, base_ms = await baseline(net, specs, args.duration)
        except Exception as e:
            print(f"  baseline failed: {e!r}")
        else:
            print(
                f"  baseline, same process: bare pymodbus clients doing the same requests on the "
                f"same schedule: CPU {base_cpu:.1f} %, request p50 {statistics.median(base_ms):.2f} ms "
                f"p99 {pct(base_ms, 0.99):.2f} ms"
            )
            print(f"  swapd Modbus layer / bare pymodbus CPU: {cpu / base_cpu:.2f} (goal <= 1.3)")
        print(f"  load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"  event loop: {type(asyncio.get_running_loop()).__module__.split('.')[0]}")
    finally:
        child.terminate()
        child.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--chargers", type=int, default=24)
    ap.add_argument("--map", choices=["generic", "vendorb"], default="generic")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the measured side (swapd run uses uvloop when installed)",
    )
    args = ap.parse_args()
    if args.serve:
        try:
            asyncio.run(serve(args.serve))
        except KeyboardInterrupt:
            pass
        return
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bench(args))


if __name__ == "__main__":
    main()
