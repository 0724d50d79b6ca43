"""A 40 MB command payload must not stall the station: the MQTT 5 link tells the broker its
maximum packet size (the broker drops the packet), and on MQTT 3.1.1 the link refuses to read a
packet whose header announces more than the limit. The GB/T sessions of charging slots carry on:
no CEM, no CST reaches a pack, and the event loop's lag stays small."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from sim.devices.pack import BmsPhase
from tests.conftest import Broker
from tests.edge.station_fixtures import mini_config, running_station, wait_for

PUBLISH_40MB = """
import sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
head = b'{"cmd_id": "huge-1", "expires_at": "2099-01-01T00:00:00Z", "params": {"pad": "'
info = c.publish(sys.argv[2], head + b"a" * (40 * 1024 * 1024) + b'"}}', qos=1)
info.wait_for_publish(timeout=60)
c.disconnect()
c.loop_stop()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_40mb_payload_does_not_stall_charging_sessions(
    mosquitto: Broker, tmp_path: Path, protocol: str
) -> None:
    path = mini_config(tmp_path, 2, mqtt_port=mosquitto.port)
    path.write_text(path.read_text().replace('protocol: "5"', f'protocol: "{protocol}"'))
    async with running_station(path, soc_pct=40.0) as w:
        st = w.station
        await wait_for(lambda: all(p.core.phase is BmsPhase.CHARGING for p in w.packs.values()), 30)
        await asyncio.wait_for(st.telemetry.connected.wait(), 10)
        cem = {s: p.core.counters.cem_seen for s, p in w.packs.items()}
        ended = {s: p.core.counters.sessions_ended for s, p in w.packs.items()}
        lags: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - t0 - 0.01)

        prober = asyncio.create_task(probe())
        pub = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PUBLISH_40MB,
            str(mosquitto.port),
            "swapstation/v1/it-station/cmd/start_swap",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(90):
            _, err = await pub.communicate()
        assert pub.returncode == 0, err
        await asyncio.sleep(2.0)  # the broker forwards (or drops) it meanwhile
        stop.set()
        await prober
        max_lag_s = max(lags)
        print(f"protocol {protocol}: max event-loop lag {max_lag_s * 1000:.0f} ms")
        assert max_lag_s < 0.5
        assert all(p.core.phase is BmsPhase.CHARGING for p in w.packs.values())
        assert {s: p.core.counters.cem_seen for s, p in w.packs.items()} == cem
        assert {s: p.core.counters.sessions_ended for s, p in w.packs.items()} == ended
        assert st.command_service.executed == 0  # the payload never reached the service
        if protocol == "3.1.1":
            # No maximum packet size in 3.1.1: the broker sent it, the link refused to read it
            # and connected again.
            await wait_for(lambda: st.telemetry.connects >= 2, 10)
