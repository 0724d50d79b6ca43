import asyncio

import aiomqtt

from drivers.core.clock import utc_iso
from tests.conftest import Broker
from tests.doubles import ManualClock


async def test_manual_clock_wakes_sleepers_in_order(clock: ManualClock) -> None:
    woke: list[str] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append(name)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(sleeper("b", 2.0))
        tg.create_task(sleeper("a", 1.0))
        await asyncio.sleep(0)
        clock.advance(1.5)
        await asyncio.sleep(0)
        assert woke == ["a"]
        clock.advance(1.0)
    assert woke == ["a", "b"]
    assert utc_iso(clock.now()).endswith("Z")


async def test_mosquitto_fixture_kill_and_restart(mosquitto: Broker) -> None:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
        await c.subscribe("t/#")
        await c.publish("t/x", b"1", qos=1)
        async with asyncio.timeout(5):
            async for m in c.messages:
                assert m.payload == b"1"
                break
    mosquitto.kill9()
    mosquitto.start()
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
        await c.publish("t/y", b"2", qos=1)
