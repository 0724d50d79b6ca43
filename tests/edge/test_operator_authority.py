"""Who may do what: one command service behind MQTT, `swapd ctl` and the sim route; the remote
policy's defaults; swap_id required; signatures; bounded input; dedupe under a flood."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError
from structlog.testing import capture_logs

from drivers.core.clock import SystemClock
from drivers.core.datafile import DataFileError
from edge.alarms import AlarmManager
from edge.command_types import LOCAL, SIM, Rejected
from edge.config import load_config
from edge.operator.commands import StationCommands
from edge.operator.config import REMOTE_DEFAULTS, CommandsConfig
from edge.operator.ctl import CtlServer
from edge.operator.service import CommandService
from edge.operator.signatures import KeyLoadError, Verifier, load_keys, signed_bytes
from edge.state import GridState, OperatingMode, StationState
from edge.telemetry.commands import CommandProcessor, CommandStore, find_cmd_id
from edge.telemetry.config import TelemetryConfig
from edge.telemetry.outbox import open_db
from edge.telemetry.service import Telemetry
from tests.conftest import Broker
from tests.doubles import InMemoryTarget, ManualClock
from tests.edge.station_fixtures import mini_config
from tests.edge.swap_fixtures import live_rig
from tests.edge.telemetry_fixtures import (
    STATION_ID,
    command_service,
    iso,
    mqtt_config,
    recorder,
    running,
    telemetry_config,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = f"swapstation/v1/{STATION_ID}"


def _cmd(cmd_id: str, params: dict[str, Any], ttl_s: float = 60.0, **extra: Any) -> bytes:
    d: dict[str, Any] = {
        "cmd_id": cmd_id,
        "expires_at": iso(NOW + timedelta(seconds=ttl_s)),
        "params": params,
    }
    d.update(extra)
    return orjson.dumps(d)


class _Proc:
    """The MQTT route without a broker: processor + command service + in-memory station."""

    def __init__(self, tmp_path: Path, verifier: Verifier | None = None, **limits: Any) -> None:
        self.clock = ManualClock(wall=NOW)
        self.target = InMemoryTarget()
        self.limits = CommandsConfig.model_validate(limits)
        self.cfg = TelemetryConfig.model_validate({"outbox_path": tmp_path / "x"})
        self.service = command_service(self.target, self.limits, self.cfg, self.clock, verifier)
        self.db = open_db(tmp_path / "c.sqlite", "normal")
        self.proc = CommandProcessor(
            self.cfg,
            self.service,
            CommandStore(self.db, self.limits.dedupe_max),
            self.clock,
            limits=self.limits,
        )

    def restart(self) -> None:
        """The route as after a daemon restart: a new store and processor on the same file."""
        self.proc = CommandProcessor(
            self.cfg,
            self.service,
            CommandStore(self.db, self.limits.dedupe_max),
            self.clock,
            limits=self.limits,
        )

    async def run(self, name: str, payload: bytes) -> tuple[str | None, str | None]:
        r = orjson.loads(await self.proc.handle(name, payload))
        return r["cmd_id"], (r["error"]["code"] if r["error"] else None)


# ---- the remote policy -------------------------------------------------------------------

VALID: dict[str, dict[str, Any]] = {
    "start_swap": {"vehicle_id": "V1", "pack_type": "A"},
    "set_power_limit": {"power_kw": 50, "valid_until": iso(NOW + timedelta(hours=1))},
    "set_mode": {"mode": "drain"},
    "refresh": {},
    "manual": {"enabled": True, "swap_id": "SW-1"},
    "end_manual": {"enabled": False, "swap_id": "SW-1"},
    "reset_fault": {},
    "retry_step": {"swap_id": "SW-1"},
    "refit_original": {"swap_id": "SW-1"},
    "reset_slot": {"slot_id": "s03"},
    "inventory_set": {"pack_id": "P1", "place": None},
    "disable_slot": {"slot_id": "s03"},
    "enable_slot": {"slot_id": "s03"},
}


async def test_remote_policy_defaults_deny_recovery_and_come_before_params(
    tmp_path: Path,
) -> None:
    e = _Proc(tmp_path, burst_per_client=1000)
    assert set(VALID) == set(REMOTE_DEFAULTS)
    denied = {n for n, p in REMOTE_DEFAULTS.items() if p == "deny"}
    assert denied == {
        "end_manual",
        "reset_fault",
        "retry_step",
        "refit_original",
        "reset_slot",
        "inventory_set",
        "disable_slot",
        "enable_slot",
    }
    for i, (entry, params) in enumerate(VALID.items()):
        name = "manual" if entry == "end_manual" else entry
        _, code = await e.run(name, _cmd(f"p{i}", params))
        assert (code == "not_allowed") is (entry in denied), (entry, code)
        # Policy before parameters: a denied command with broken params is still not_allowed.
        if entry in denied:
            broken = {"enabled": False, "junk": 1} if entry == "end_manual" else {"junk": 1}
            _, code = await e.run(name, _cmd(f"q{i}", broken))
            assert code == "not_allowed", entry
    # No denied command reached the station.
    assert {c for c, _ in e.target.calls} <= {
        "start_swap",
        "set_power_limit",
        "set_mode",
        "refresh",
        "manual",
    }
    # The sim route obeys the same policy; the local operator is not bound by it.
    with pytest.raises(Rejected) as info:
        await e.service.execute("retry_step", {"swap_id": "SW-1"}, SIM)
    assert info.value.code == "not_allowed"
    await e.service.execute("retry_step", {"swap_id": "SW-1"}, LOCAL)
    assert e.target.calls[-1][0] == "retry_step"  # the operator at the station may
    allowed = _Proc(tmp_path / "b", remote={"retry_step": "allow"})
    allowed.target.swap_running = True
    assert (await allowed.run("retry_step", _cmd("r1", {"swap_id": "SW-1"})))[1] is None
    e.db.close()
    allowed.db.close()


async def test_swap_id_is_required_and_a_stale_one_is_rejected(tmp_path: Path) -> None:
    e = _Proc(tmp_path, remote={"retry_step": "allow", "refit_original": "allow"})
    e.target.swap_running = True
    assert (await e.run("retry_step", _cmd("s1", {})))[1] == "invalid_params"
    assert (await e.run("refit_original", _cmd("s2", {})))[1] == "invalid_params"
    assert (await e.run("manual", _cmd("s3", {"enabled": True})))[1] == "invalid_params"
    assert (await e.run("retry_step", _cmd("s4", {"swap_id": "SW-0"})))[1] == "rejected"
    assert (await e.run("retry_step", _cmd("s5", {"swap_id": "SW-1"})))[1] is None
    e.db.close()


# ---- signatures ----------------------------------------------------------------------------


def _key(tmp_path: Path, name: str) -> tuple[Ed25519PrivateKey, Path]:
    private = Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / f"{name}.pub"
    path.write_bytes(pem)
    return private, path


def _signed(
    private: Ed25519PrivateKey,
    key_id: str,
    name: str,
    cmd_id: str,
    params: dict[str, Any],
    station: str = STATION_ID,
) -> bytes:
    expires_at = iso(NOW + timedelta(seconds=60))
    sig = private.sign(signed_bytes(station, name, cmd_id, expires_at, params))
    return orjson.dumps(
        {
            "cmd_id": cmd_id,
            "expires_at": expires_at,
            "params": params,
            "key_id": key_id,
            "sig": base64.b64encode(sig).decode(),
        }
    )


async def test_signatures_accepted_rejected_and_rotated(tmp_path: Path) -> None:
    old, old_pub = _key(tmp_path, "old")
    new, new_pub = _key(tmp_path, "new")
    limits: dict[str, Any] = {
        "remote": {"start_swap": "signed"},
        "keys": [{"id": "k-old", "file": str(old_pub)}, {"id": "k-new", "file": str(new_pub)}],
    }
    cfg = CommandsConfig.model_validate(limits)
    verifier = Verifier(STATION_ID, load_keys(list(cfg.keys)))
    e = _Proc(tmp_path, verifier, **limits)
    swap = {"vehicle_id": "V1", "pack_type": "A"}
    assert (await e.run("start_swap", _cmd("u1", swap)))[1] == "unauthorized"  # unsigned
    assert (await e.run("start_swap", _signed(old, "k-old", "start_swap", "u2", swap)))[1] is None
    e.target.swap_running = False
    # Rotation: the new key works beside the old one.
    assert (await e.run("start_swap", _signed(new, "k-new", "start_swap", "u3", swap)))[1] is None
    e.target.swap_running = False
    # Wrong key for the id, another station, other params, an unknown key id: unauthorized.
    assert (await e.run("start_swap", _signed(new, "k-old", "start_swap", "u4", swap)))[
        1
    ] == "unauthorized"
    other = _signed(old, "k-old", "start_swap", "u5", swap, station="st-other")
    assert (await e.run("start_swap", other))[1] == "unauthorized"
    good = orjson.loads(_signed(old, "k-old", "start_swap", "u6", swap))
    good["params"] = {"vehicle_id": "V2", "pack_type": "A"}
    assert (await e.run("start_swap", orjson.dumps(good)))[1] == "unauthorized"
    assert (await e.run("start_swap", _signed(old, "k-gone", "start_swap", "u7", swap)))[
        1
    ] == "unauthorized"
    # A signature made for set_mode cannot be used as another command.
    as_other = orjson.loads(_signed(old, "k-old", "set_mode", "u8", {"mode": "drain"}))
    assert (await e.run("set_mode", orjson.dumps(as_other)))[1] is None
    assert (await e.run("refresh", orjson.dumps({**as_other, "cmd_id": "u9"})))[1] == "unauthorized"
    # A bad signature is refused even where the policy only says allow.
    assert (await e.run("set_mode", _signed(new, "k-old", "set_mode", "u10", {"mode": "normal"})))[
        1
    ] == "unauthorized"
    assert [c for c, _ in e.target.calls] == ["start_swap", "start_swap", "set_mode"]
    assert verifier.failures == 7
    e.db.close()


def test_keys_from_files_and_systemd_credentials_and_bad_keys_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cmd-key").write_text(base64.b64encode(raw).decode() + "\n")
    keys = CommandsConfig.model_validate({"keys": [{"id": "k-cred", "credential": "cmd-key"}]})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeyLoadError, match="CREDENTIALS_DIRECTORY"):
        load_keys(list(keys.keys))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    verifier = Verifier(STATION_ID, load_keys(list(keys.keys)))
    expires_at = iso(NOW)
    sig = private.sign(signed_bytes(STATION_ID, "refresh", "c1", expires_at, {}))
    assert verifier.verify(
        "refresh", "c1", expires_at, {}, "k-cred", base64.b64encode(sig).decode()
    )
    # The config refuses what cannot work.
    for bad in (
        {"remote": {"start_swap": "signed"}},  # signed, but no key
        {"remote": {"fly": "allow"}},
        {"keys": [{"id": "a", "file": "a.pub"}, {"id": "a", "file": "b.pub"}]},
        {"keys": [{"id": f"k{i}", "file": "a.pub"} for i in range(3)]},  # two at once at most
        {"keys": [{"id": "a", "file": "a.pub", "credential": "a"}]},
    ):
        with pytest.raises(ValidationError):
            CommandsConfig.model_validate(bad)
    # check-config (load_config) reads and parses key files as `swapd run` would.
    (tmp_path / "not-a-key.pub").write_text("hello\n")
    extra = (
        "commands:\n"
        "  keys:\n"
        f"    - {{id: gone, file: '{tmp_path / 'gone.pub'}'}}\n"
        f"    - {{id: junk, file: '{tmp_path / 'not-a-key.pub'}'}}\n"
    )
    with pytest.raises(DataFileError) as info:
        load_config(mini_config(tmp_path, 1, extra=extra))
    fields = {p.field: p.message for p in info.value.problems}
    assert "cannot read" in fields["commands.keys.0.file"]
    assert "not an Ed25519 public key" in fields["commands.keys.1.file"]


async def test_expires_at_is_judged_with_the_clock_tolerance(tmp_path: Path) -> None:
    e = _Proc(tmp_path)  # clock_tolerance_s: 5 (default)
    assert e.limits.clock_tolerance_s == 5.0
    assert (await e.run("refresh", _cmd("t1", {}, ttl_s=-3.0)))[1] is None  # within 5 s
    assert (await e.run("refresh", _cmd("t2", {}, ttl_s=-6.0)))[1] == "expired"
    ahead = e.cfg.max_command_ttl_s
    assert (await e.run("refresh", _cmd("t3", {}, ttl_s=ahead + 3.0)))[1] is None
    assert (await e.run("refresh", _cmd("t4", {}, ttl_s=ahead + 6.0)))[1] == "out_of_range"
    strict = _Proc(tmp_path / "s", clock_tolerance_s=0)
    assert (await strict.run("refresh", _cmd("t5", {}, ttl_s=-1.0)))[1] == "expired"
    e.db.close()
    strict.db.close()


# ---- bounded input -------------------------------------------------------------------------


async def test_too_large_is_dropped_before_parsing_and_answered_with_its_cmd_id(
    tmp_path: Path,
) -> None:
    e = _Proc(tmp_path)
    big = b'{"cmd_id": "big-1", "expires_at": "x", "params": {"pad": "' + b"a" * 70_000 + b'"}}'
    assert await e.run("set_mode", big) == ("big-1", "too_large")
    # Not even JSON: still dropped unread, no cmd_id to be found.
    assert await e.run("set_mode", b"{" * 70_000) == (None, "too_large")
    assert e.proc.too_large == 2 and e.target.calls == []
    assert find_cmd_id(b'{"params": {}, "cmd_id":"c-9"}') == "c-9"
    e.db.close()


async def test_rate_limit_per_client_answers_busy(tmp_path: Path) -> None:
    e = _Proc(tmp_path, rate_per_client_per_s=1.0, burst_per_client=3)
    codes = [(await e.run("refresh", _cmd(f"r{i}", {}, client_id="flooder")))[1] for i in range(5)]
    assert codes == [None, None, None, "busy", "busy"]
    # Another client is not held up by the flooder; after a second the flooder has one more.
    assert (await e.run("refresh", _cmd("o1", {}, client_id="backend")))[1] is None
    e.clock.advance(1.0)
    assert (await e.run("refresh", _cmd("r9", {}, client_id="flooder")))[1] is None
    assert e.proc.busy == 2
    e.db.close()


async def test_dedupe_under_a_flood_never_evicts_live_entries_nor_runs_twice(
    tmp_path: Path,
) -> None:
    e = _Proc(tmp_path, dedupe_max=50, rate_per_client_per_s=10_000, burst_per_client=10_000)
    first = [await e.proc.handle("set_mode", _cmd(f"f{i}", {"mode": "drain"})) for i in range(50)]
    flood = [(await e.run("set_mode", _cmd(f"x{i}", {"mode": "normal"})))[1] for i in range(500)]
    assert set(flood) == {"busy"}  # the store is full of live commands: new ones wait
    # Every live command is still answered from the store, byte for byte, and never runs twice.
    for i in range(50):
        assert await e.proc.handle("set_mode", _cmd(f"f{i}", {"mode": "drain"})) == first[i]
    assert len(e.target.calls) == 50
    # Once they expire (60 s, remembered at least an hour) the store takes new commands again.
    e.clock.advance(3600 + 61)
    assert (await e.run("set_mode", _cmd("late", {"mode": "normal"}, ttl_s=3600 + 120)))[1] is None
    e.db.close()


@pytest.mark.timeout(120)
async def test_a_flood_at_the_default_100000_evicts_no_live_entry(tmp_path: Path) -> None:
    """At full scale: 100,000 live commands remembered (the default `dedupe_max`), then a flood
    of new ones. None of the live ones is forgotten or runs twice, and a refusal stays cheap
    (the loop is not starved by a full store)."""
    e = _Proc(tmp_path, rate_per_client_per_s=10_000, burst_per_client=10_000)
    assert e.limits.dedupe_max == 100_000
    live = 20
    first = [await e.proc.handle("set_mode", _cmd(f"f{i}", {"mode": "drain"})) for i in range(live)]
    # The rest of the first 100,000, stored as the processor stores them (in bulk: one by one
    # they would take the test half a minute), then the route restarts on them.
    keep = (NOW + timedelta(seconds=3600 + 60)).timestamp()
    e.db.execute("BEGIN")
    e.db.executemany(
        "INSERT INTO commands (cmd_id, keep_until, result) VALUES (?, ?, ?)",
        ((f"b{i}", keep, b'{"earlier": %d}' % i) for i in range(100_000 - live)),
    )
    e.db.execute("COMMIT")
    e.restart()
    flood = 20_000
    t0 = time.perf_counter()
    answers = set()
    for i in range(flood):  # from many client ids: the rate limit is not what stops them
        raw = await e.proc.handle(
            "set_mode", _cmd(f"x{i}", {"mode": "normal"}, client_id=f"c{i % 50}")
        )
        err = orjson.loads(raw)["error"]
        answers.add((err["code"], err["message"]))
    per_command_s = (time.perf_counter() - t0) / flood
    print(f"full store: {per_command_s * 1e6:.0f} us per refused command")
    assert answers == {("busy", "too many commands remembered; retry later")}
    rows = e.db.execute("SELECT COUNT(*) FROM commands").fetchone()[0]
    assert rows == 100_000  # nothing evicted, nothing added
    assert per_command_s < 0.005, per_command_s
    for i in range(live):  # answered from the store, byte for byte, never run again
        assert await e.proc.handle("set_mode", _cmd(f"f{i}", {"mode": "drain"})) == first[i]
    for i in (0, 50_000, 100_000 - live - 1):
        assert await e.proc.handle("set_mode", _cmd(f"b{i}", {})) == b'{"earlier": %d}' % i
    assert len(e.target.calls) == live
    # Once they have expired, new commands are taken again.
    e.clock.advance(3600 + 61)
    assert (await e.run("set_mode", _cmd("late", {"mode": "normal"}, ttl_s=3600 + 120)))[1] is None
    e.db.close()


# ---- one answer whatever the route ---------------------------------------------------------

OPEN = dict.fromkeys(REMOTE_DEFAULTS, "allow")
TABLE: list[tuple[str, dict[str, Any], str | None]] = [
    ("set_mode", {"mode": "maintenance"}, None),
    (
        "start_swap",
        {"vehicle_id": "V1", "pack_type": "T20", "announced_pack_id": "P-CAR-1"},
        "rejected",
    ),
    ("set_mode", {"mode": "turbo"}, "invalid_params"),
    ("retry_step", {}, "invalid_params"),
    ("retry_step", {"swap_id": "SW-stale"}, "rejected"),
    ("reset_slot", {"slot_id": "s99"}, "rejected"),
    ("reset_fault", {}, "rejected"),
    ("fly", {}, "unknown_command"),
    ("set_mode", {"mode": "normal"}, None),
]


async def test_same_command_same_answer_over_mqtt_ctl_and_sim(
    mosquitto: Broker, tmp_path: Path
) -> None:
    clock = SystemClock()
    async with live_rig(tmp_path, speed=100.0) as rig:
        state = StationState("st", GridState(cap_kw=100, limit_kw=100), alarms=AlarmManager(clock))
        station = StationCommands(state, clock)
        station.swap = rig.coord
        service = CommandService(CommandsConfig(remote=OPEN), station, clock=clock)
        tel = Telemetry(
            STATION_ID,
            mqtt_config(mosquitto.host, mosquitto.port),
            telemetry_config(tmp_path),
            service,
            version="t",
        )
        ctl = CtlServer(tmp_path / "ctl.sock", service)
        await ctl.start()

        async def over_ctl(name: str, params: dict[str, Any]) -> tuple[str | None, str]:
            r, w = await asyncio.open_unix_connection(str(tmp_path / "ctl.sock"))
            w.write(orjson.dumps({"command": name, "params": params}) + b"\n")
            reply = orjson.loads(await r.readline())
            w.close()
            await w.wait_closed()
            err = reply.get("error")
            return (err["code"], err["message"]) if err else (None, "")

        async def over_sim(name: str, params: dict[str, Any]) -> tuple[str | None, str]:
            try:
                await service.execute(name, params, SIM)
            except Rejected as e:
                return e.code, e.message
            return None, ""

        try:
            async with (
                recorder(mosquitto.host, mosquitto.port, f"{ROOT}/cmd/+/result") as rec,
                running(tel),
            ):
                await asyncio.wait_for(tel.connected.wait(), 10)
                import aiomqtt

                async with aiomqtt.Client(mosquitto.host, mosquitto.port) as cloud:

                    async def over_mqtt(
                        name: str, params: dict[str, Any]
                    ) -> tuple[str | None, str]:
                        n = len(rec.messages)
                        payload = orjson.dumps(
                            {
                                "cmd_id": f"t{n}",
                                "expires_at": iso(datetime.now(UTC) + timedelta(seconds=60)),
                                "params": params,
                            }
                        )
                        await cloud.publish(f"{ROOT}/cmd/{name}", payload, qos=1)
                        await rec.wait_for(lambda: len(rec.messages) > n)
                        res = rec.messages[n].json()
                        err = res["error"]
                        return (err["code"], err["message"]) if err else (None, "")

                    with capture_logs() as logs:
                        for name, params, code in TABLE:
                            answers = {
                                route: await fn(name, params)
                                for route, fn in (
                                    ("mqtt", over_mqtt),
                                    ("ctl", over_ctl),
                                    ("sim", over_sim),
                                )
                            }
                            assert len(set(answers.values())) == 1, (name, params, answers)
                            assert answers["sim"][0] == code, (name, answers)
                            if name == "start_swap":
                                assert state.operating_mode is OperatingMode.MAINTENANCE
                                assert "maintenance" in answers["sim"][1]
                    # Each command is logged once, with its origin, whatever the answer.
                    lines = [
                        e for e in logs if e["event"] in ("command carried out", "command refused")
                    ]
                    for route in ("mqtt", "ctl", "sim"):
                        mine = [e for e in lines if e["route"] == route]
                        assert [e["command"] for e in mine] == [n for n, _, _ in TABLE], route
                    assert len(lines) == 3 * len(TABLE)
                    assert all(e["cmd_id"] for e in lines if e["route"] == "mqtt")
                    assert all(e["uid"] == os.getuid() for e in lines if e["route"] == "ctl")
        finally:
            await ctl.stop()
            tel.close()
    assert rig.coord.core.swap is None  # maintenance: nothing started by any route
