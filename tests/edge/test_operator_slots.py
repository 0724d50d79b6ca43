"""A slot out of service and per-slot latch resets, through the command service of a running
station (judged by what the simulated charger and pack see)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from structlog.testing import capture_logs

from drivers.can.events import Phase
from edge.command_types import LOCAL, SIM, Rejected
from edge.operator.commands import OutOfService
from edge.operator.signatures import signed_bytes
from edge.slot.core import SlotState
from sim.devices.pack import BmsPhase, Fault
from tests.conftest import Broker
from tests.edge.station_fixtures import mini_config, running_station, wait_for
from tests.edge.telemetry_fixtures import iso, recorder


def _enabled(w: object, charger_id: str) -> bool:
    return bool(w.chargers[charger_id].get("enable"))  # type: ignore[attr-defined]


async def test_disable_slot_output_off_no_pack_in_or_out_kept_across_restarts(
    tmp_path: Path,
) -> None:
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        st, svc = w.station, w.station.command_service
        await wait_for(lambda: _enabled(w, "ch01") and _enabled(w, "ch02"), 30)
        # Local by default: the remote policy refuses it.
        with pytest.raises(Rejected) as info:
            await svc.execute("disable_slot", {"slot_id": "s01"}, SIM)
        assert info.value.code == "not_allowed"
        out = await svc.execute("disable_slot", {"slot_id": "s01", "reason": "worn"}, LOCAL)
        assert out == {"slot_id": "s01", "in_service": False}
        await wait_for(lambda: not _enabled(w, "ch01"), 5)
        await wait_for(lambda: w.packs["s01"].core.phase is not BmsPhase.CHARGING, 5)
        assert _enabled(w, "ch02")  # the other slot charges on
        views = {v.slot_id: v for v in st.swap.coordinator.slots.slot_views()}
        assert views["s01"].available is False and views["s02"].available is True
        assert st.slots["s01"].in_service is False
        # Kept on disk: a restarted station starts with it out of service.
        assert OutOfService(tmp_path / "state" / "slots-out-of-service.json").slots == {
            "s01": "worn"
        }
        # A latch reset needs a latched slot; unknown slots are refused.
        with pytest.raises(Rejected, match="out of service"):
            await svc.execute("reset_slot", {"slot_id": "s01"}, LOCAL)
        with pytest.raises(Rejected, match="not latched"):
            await svc.execute("reset_slot", {"slot_id": "s02"}, LOCAL)
        with pytest.raises(Rejected, match="no slot"):
            await svc.execute("reset_slot", {"slot_id": "s09"}, LOCAL)
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        views = {v.slot_id: v for v in st.swap.coordinator.slots.slot_views()}
        assert st.slots["s01"].in_service and views["s01"].available
        assert OutOfService(tmp_path / "state" / "slots-out-of-service.json").slots == {}


async def test_enable_slot_starts_a_new_session_for_the_docked_pack(tmp_path: Path) -> None:
    """Out of service ended the pack's GB/T session (CST, BSD/CSD); back in service, the
    charger begins a new one: the pack sees CHM again, goes through CRM and charges."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        svc, pack = w.station.command_service, w.packs["s01"].core
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        handshakes, ended = pack.counters.handshakes, pack.counters.sessions_ended
        await svc.execute("disable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: pack.counters.sessions_ended > ended, 15)
        assert pack.phase is BmsPhase.ENDED and not _enabled(w, "ch01")
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: pack.counters.handshakes > handshakes, 15)
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)


async def test_enable_slot_while_its_session_is_still_ending(tmp_path: Path) -> None:
    """Enabled again before the stopped session has ended: the new session starts once the
    old one has ended (never a CHM in the middle of the stop)."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        svc, pack = w.station.command_service, w.packs["s01"].core
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        handshakes, ended = pack.counters.handshakes, pack.counters.sessions_ended
        await svc.execute("disable_slot", {"slot_id": "s01"}, LOCAL)
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: pack.counters.sessions_ended > ended, 15)
        await wait_for(lambda: pack.counters.handshakes > handshakes, 15)
        await wait_for(lambda: pack.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        assert pack.counters.sessions_ended == ended + 1


async def _ctl(sock: Path, *args: str) -> tuple[int, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "ctl",
        *args,
        "--socket",
        str(sock),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, orjson.loads(out.splitlines()[-1]) if out.strip() else None


@pytest.mark.timeout(150)
async def test_a_latched_slot_is_reset_per_slot_over_ctl_and_signed_mqtt(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """Both slots latch "BMS lost"; the packs are re-plugged. Refused commands (unsigned MQTT,
    the swap reset) leave both latches; `reset_slot s01` over ctl restarts s01's session only;
    a signed `reset_slot s02` over MQTT then restarts s02's. Judged by what the packs see."""
    private = Ed25519PrivateKey.generate()
    pub = tmp_path / "backend.pub"
    pub.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    extra = f"commands:\n  remote: {{reset_slot: signed}}\n  keys: [{{id: k1, file: '{pub}'}}]\n"
    root = "swapstation/v1/it-station"
    path = mini_config(tmp_path, 2, mqtt_port=mosquitto.port, extra=extra)
    async with (
        running_station(path, soc_pct=40.0) as w,
        recorder(mosquitto.host, mosquitto.port, f"{root}/cmd/+/result") as rec,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as cloud,
    ):
        st, sock = w.station, tmp_path / "ctl.sock"
        packs = {s: w.packs[s].core for s in ("s01", "s02")}
        await wait_for(lambda: all(p.phase is BmsPhase.CHARGING for p in packs.values()), 30)
        await asyncio.wait_for(st.telemetry.connected.wait(), 10)

        def latched(slot_id: str) -> bool:
            return st.slots[slot_id].core.state is SlotState.UNAVAILABLE and st.alarms.is_active(
                "slot.unavailable", slot_id
            )

        for pack in w.packs.values():
            pack.inject(Fault.SILENT)
        await wait_for(lambda: latched("s01") and latched("s02"), 60)
        for pack in w.packs.values():  # the attendant re-plugs both packs
            pack.clear(Fault.SILENT)
            pack.replug()
        handshakes = {s: p.counters.handshakes for s, p in packs.items()}

        async def mqtt(cmd_id: str, params: dict[str, Any], signed: bool) -> Any:
            expires_at = iso(datetime.now(UTC) + timedelta(seconds=60))
            doc: dict[str, Any] = {"cmd_id": cmd_id, "expires_at": expires_at, "params": params}
            if signed:
                raw = signed_bytes("it-station", "reset_slot", cmd_id, expires_at, params)
                doc |= {"key_id": "k1", "sig": base64.b64encode(private.sign(raw)).decode()}
            n = len(rec.messages)
            await cloud.publish(f"{root}/cmd/reset_slot", orjson.dumps(doc), qos=1)
            await rec.wait_for(lambda: len(rec.messages) > n)
            return rec.messages[n].json()

        with capture_logs() as logs:
            # Refused: nothing is cleared, no session starts.
            res = await mqtt("r-unsigned", {"slot_id": "s02"}, signed=False)
            assert res["error"]["code"] == "unauthorized"
            rc, doc = await _ctl(sock, "reset-fault")  # the swap reset never touches slots
            assert rc == 1 and doc["error"]["code"] == "rejected"
            assert latched("s01") and latched("s02")
            # Per slot, over ctl: s01's session starts again, s02 stays latched.
            rc, doc = await _ctl(sock, "reset-slot", "s01")
            assert rc == 0 and doc["slot_id"] == "s01", doc
            await wait_for(lambda: packs["s01"].counters.handshakes > handshakes["s01"], 15)
            await wait_for(lambda: packs["s01"].phase is BmsPhase.CHARGING, 30)
            assert latched("s02") and packs["s02"].counters.handshakes == handshakes["s02"]
            assert not st.alarms.is_active("slot.unavailable", "s01")
            # Signed, over MQTT: s02 too.
            res = await mqtt("r-signed", {"slot_id": "s02"}, signed=True)
            assert res["ok"] is True, res
            await wait_for(lambda: packs["s02"].counters.handshakes > handshakes["s02"], 15)
            await wait_for(lambda: packs["s02"].phase is BmsPhase.CHARGING, 30)
            assert not st.alarms.is_active("slot.unavailable", "s02")
        # Each command logged once, with its origin.
        lines = [e for e in logs if e["event"] in ("command carried out", "command refused")]
        by_what = [(e["command"], e["route"], e["ok"]) for e in lines]
        assert by_what == [
            ("reset_slot", "mqtt", False),
            ("reset_fault", "ctl", False),
            ("reset_slot", "ctl", True),
            ("reset_slot", "mqtt", True),
        ], by_what
        assert lines[0]["cmd_id"] == "r-unsigned" and lines[0]["code"] == "unauthorized"
        assert lines[2]["uid"] == os.getuid() and "pid" in lines[2]
        assert lines[3]["cmd_id"] == "r-signed" and lines[3]["key_id"] == "k1"


@pytest.mark.timeout(120)
async def test_out_of_service_is_in_telemetry_and_survives_a_restart(
    mosquitto: Broker, tmp_path: Path
) -> None:
    path = mini_config(tmp_path, 2, mqtt_port=mosquitto.port)
    topic = "swapstation/v1/it-station/telemetry/slot/s01"
    async with (
        running_station(path, soc_pct=40.0) as w,
        recorder(mosquitto.host, mosquitto.port, topic) as rec,
    ):
        await wait_for(lambda: _enabled(w, "ch01"), 30)
        await w.station.command_service.execute(
            "disable_slot", {"slot_id": "s01", "reason": "connector worn"}, LOCAL
        )
        await rec.wait_for(lambda: any(m.json()["in_service"] is False for m in rec.messages))
    # A new daemon on the same state: s01 stays out from the start (never a session, output
    # never on), s02 charges; enabled again, s01's pack is charged too.
    async with running_station(path, soc_pct=40.0) as w:
        s01, s02 = w.packs["s01"].core, w.packs["s02"].core
        await wait_for(lambda: s02.phase is BmsPhase.CHARGING and _enabled(w, "ch02"), 30)
        assert w.station.slots["s01"].in_service is False
        assert s01.counters.handshakes == 0 and not _enabled(w, "ch01")
        await w.station.command_service.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: s01.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)


@pytest.mark.timeout(120)
async def test_the_emergency_stop_reset_leaves_a_bms_lost_latch_to_reset_slot(
    tmp_path: Path,
) -> None:
    """reset_fault (the e-stop reset) restarts the sessions the stop ended, but a slot latched
    "BMS lost" before it stays latched: only `reset_slot` clears a slot latch."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        st, svc = w.station, w.station.command_service
        s01, s02 = w.packs["s01"].core, w.packs["s02"].core
        await wait_for(lambda: s01.phase is BmsPhase.CHARGING and s02.phase is BmsPhase.CHARGING)
        w.packs["s01"].inject(Fault.SILENT)
        await wait_for(lambda: st.slots["s01"].core.state is SlotState.UNAVAILABLE, 60)
        w.packs["s01"].clear(Fault.SILENT)
        w.packs["s01"].replug()
        handshakes = s01.counters.handshakes
        coord = st.swap.coordinator
        w.plc.emergency_stop(True)
        await wait_for(lambda: not _enabled(w, "ch02"), 5)
        w.plc.emergency_stop(False)
        await wait_for(
            lambda: coord.core.plc is not None and coord.core.plc.inputs["estop_chain_healthy"], 5
        )
        await svc.execute("reset_fault", {}, LOCAL)
        await wait_for(lambda: s02.phase is BmsPhase.CHARGING and _enabled(w, "ch02"), 30)
        assert st.slots["s01"].core.state is SlotState.UNAVAILABLE
        assert st.alarms.is_active("slot.unavailable", "s01")
        assert s01.counters.handshakes == handshakes and not _enabled(w, "ch01")
        await svc.execute("reset_slot", {"slot_id": "s01"}, LOCAL)
        await wait_for(lambda: s01.phase is BmsPhase.CHARGING and _enabled(w, "ch01"), 30)
        assert s01.counters.handshakes > handshakes


@pytest.mark.timeout(120)
async def test_neither_enable_slot_nor_the_estop_reset_clears_a_pack_fault(tmp_path: Path) -> None:
    """A new session would clear the pack-fault latch: enable_slot and the e-stop reset begin
    none on a faulted slot (the latch stays until another pack is docked)."""
    async with running_station(mini_config(tmp_path, 2), soc_pct=40.0) as w:
        st, svc, coord = w.station, w.station.command_service, w.station.swap.coordinator
        s01, s02 = w.packs["s01"].core, w.packs["s02"].core
        await wait_for(lambda: s01.phase is BmsPhase.CHARGING and s02.phase is BmsPhase.CHARGING)
        w.packs["s01"].inject(Fault.OVER_TEMPERATURE)
        await wait_for(lambda: st.slots["s01"].core.state is SlotState.FAULTED, 10)
        await wait_for(lambda: s01.phase is BmsPhase.ENDED, 10)
        await wait_for(lambda: st.slots["s01"].core.phase is Phase.ENDED, 10)  # charger side too
        handshakes = s01.counters.handshakes
        await svc.execute("disable_slot", {"slot_id": "s01"}, LOCAL)
        await svc.execute("enable_slot", {"slot_id": "s01"}, LOCAL)
        w.plc.emergency_stop(True)
        await wait_for(lambda: not _enabled(w, "ch02"), 5)
        w.plc.emergency_stop(False)
        await wait_for(
            lambda: coord.core.plc is not None and coord.core.plc.inputs["estop_chain_healthy"], 5
        )
        await svc.execute("reset_fault", {}, LOCAL)
        await wait_for(lambda: s02.phase is BmsPhase.CHARGING and _enabled(w, "ch02"), 30)
        assert st.slots["s01"].core.state is SlotState.FAULTED
        assert st.alarms.is_active("pack.over_temperature", "s01")
        assert s01.counters.handshakes == handshakes and not _enabled(w, "ch01")
