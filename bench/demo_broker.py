"""Embedded amqtt broker against a private Mosquitto: throughput and latency as the demo uses them.

For each broker: aiomqtt publisher -> broker -> aiomqtt subscriber in this process, 300-byte JSON
payloads. QoS 0 fire-and-forget throughput (messages received per second), QoS 1 with each publish
awaited (PUBACK), and the one-way latency of QoS 1 messages sent one at a time (median, p99).
Run: .venv/bin/python bench/demo_broker.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiomqtt

from sim.broker import BrokerAddress, mosquitto_binary, open_broker

PAYLOAD = b'{"soc_pct": 51.5, "power_kw": 42.0, "pad": "' + b"x" * 256 + b'"}'


def client(addr: BrokerAddress, ident: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        addr.host,
        addr.port,
        identifier=ident,
        protocol=aiomqtt.ProtocolVersion.V311,
        max_queued_incoming_messages=0,
    )


async def throughput(addr: BrokerAddress, qos: int, n: int) -> float:
    async with client(addr, "bench-sub") as sub, client(addr, "bench-pub") as pub:
        await sub.subscribe("bench/#", qos=qos)
        got = 0
        t0 = time.perf_counter()

        async def consume() -> None:
            nonlocal got
            async for _ in sub.messages:
                got += 1
                if got == n:
                    return

        consumer = asyncio.create_task(consume(), name="bench-consume")
        for i in range(n):
            await pub.publish(f"bench/t/{i % 12}", PAYLOAD, qos=qos)
        async with asyncio.timeout(60):
            await consumer
        return n / (time.perf_counter() - t0)


async def latency(addr: BrokerAddress, n: int) -> list[float]:
    out: list[float] = []
    async with client(addr, "bench-lsub") as sub, client(addr, "bench-lpub") as pub:
        await sub.subscribe("lat/#", qos=1)
        it = aiter(sub.messages)
        for _ in range(n):
            t0 = time.perf_counter()
            await pub.publish("lat/x", PAYLOAD, qos=1)
            async with asyncio.timeout(10):
                await anext(it)
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def bench(spec: str) -> None:
    async with open_broker(spec) as addr:
        await throughput(addr, 0, 500)  # warm-up
        q0 = [await throughput(addr, 0, 3000) for _ in range(3)]
        q1 = [await throughput(addr, 1, 2000) for _ in range(3)]
        lat = sorted(await latency(addr, 1000))
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(
        f"{spec:<10} QoS0 {statistics.median(q0):8.0f} msg/s (min {min(q0):.0f})"
        f"  QoS1 awaited {statistics.median(q1):7.0f} msg/s (min {min(q1):.0f})"
        f"  QoS1 one-way latency median {statistics.median(lat):.2f} ms p99 {p99:.2f} ms"
    )


async def main() -> None:
    await bench("embedded")
    if mosquitto_binary() is not None:
        await bench("mosquitto")
    else:
        print("mosquitto  not installed: baseline skipped")


if __name__ == "__main__":
    asyncio.run(main())
