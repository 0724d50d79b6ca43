"""Sans-I/O parts of telemetry: change detection, backoff, outbox, commands (no broker)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from drivers.core.backoff import Backoff
from edge.operator.config import CommandsConfig
from edge.telemetry.changes import ChangeTracker
from edge.telemetry.commands import CommandProcessor, CommandStore
from edge.telemetry.config import MqttConfig, TelemetryConfig, TlsConfig
from edge.telemetry.link import RateLimiter
from edge.telemetry.models import PROTECTED_EVENT_TYPES, SetModeParams
from edge.telemetry.outbox import EventTooLarge, Outbox, open_db
from edge.telemetry.tls import TlsSetupError, build_context
from edge.telemetry.topics import TopicError, Topics
from tests.doubles import InMemoryTarget, ManualClock
from tests.edge.telemetry_fixtures import command_service, iso

# ---- change detection ---------------------------------------------------------------------


def test_deadband_min_interval_and_refresh() -> None:
    t = ChangeTracker({"soc_pct": 0.5, "axes_mm": 1.0}, min_interval_s=1.0, refresh_s=10.0)
    assert t.set("slot/a", {"soc_pct": 50.0, "phase": "idle"})
    assert t.due(0.0) == ["slot/a"]
    t.mark_published("slot/a", 0.0)
    assert not t.set("slot/a", {"soc_pct": 50.4, "phase": "idle"})  # inside the deadband
    assert not t.set("slot/a", {"soc_pct": 49.6, "phase": "idle"})  # against last *published*
    assert t.set("slot/a", {"soc_pct": 50.5, "phase": "idle"})
    assert t.due(0.5) == []  # min interval holds it back
    assert t.next_deadline() == 1.0
    assert t.due(1.0) == ["slot/a"]
    t.mark_published("slot/a", 1.0)
    assert t.set("slot/a", {"soc_pct": 50.5, "phase": "charging"})  # strings: any change
    t.mark_published("slot/a", 2.0)
    assert t.next_deadline() == 12.0 and t.due(11.9) == [] and t.due(12.0) == ["slot/a"]
    # Numbers inside dict fields use their field's deadband.
    assert t.set("robot", {"axes_mm": {"x": 1.0}})
    t.mark_published("robot", 3.0)
    assert not t.set("robot", {"axes_mm": {"x": 1.9}})
    assert t.set("robot", {"axes_mm": {"x": 2.0}})
    t.force_all()
    assert sorted(t.due(3.1)) == ["robot", "slot/a"]


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) <= 8.0 and min(delays[6:]) >= 4.0
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next_delay() <= 0.5
    b.to_max()
    assert b.next_delay() >= 4.0


async def test_rate_limiter_paces_on_the_injected_clock(clock: ManualClock) -> None:
    lim = RateLimiter(clock, 100.0)  # burst of 10
    for _ in range(10):
        await lim.acquire()  # no waiting within the burst
    assert clock.sleepers == 0


def test_topics_and_levels() -> None:
    t = Topics.for_station("swapstation/v1", "st1")
    assert t.telemetry_slot("s1") == "swapstation/v1/st1/telemetry/slot/s1"
    assert t.command_name("swapstation/v1/st1/cmd/set_mode") == "set_mode"
    with pytest.raises(TopicError):
        t.command_name("swapstation/v1/st1/cmd/set_mode/result")
    with pytest.raises(TopicError):
        Topics.for_station("p", "a/b")
    assert len(t.sim_fault("c1").split("/")) <= 7


def test_config_forbids_unknown_keys_and_checks_commands(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        MqttConfig.model_validate({"hots": "x"})
    with pytest.raises(ValidationError):
        CommandsConfig.model_validate({"remote": {"launch": "allow"}})
    with pytest.raises(ValidationError):
        TlsConfig.model_validate({"cert_file": "c.pem"})
    with pytest.raises(ValidationError):
        MqttConfig.model_validate({"prefix": "a/#"})


def test_password_from_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    cfg = MqttConfig(username="u", password="inline", password_file=f)
    monkeypatch.delenv("SWAPD_MQTT_PASSWORD", raising=False)
    assert cfg.resolve_password() == "from-file"
    monkeypatch.setenv("SWAPD_MQTT_PASSWORD", "from-env")
    assert cfg.resolve_password() == "from-env"


def test_tls_credentials_need_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(TlsSetupError, match="CREDENTIALS_DIRECTORY"):
        build_context(TlsConfig(ca_credential="ca.pem"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(TlsSetupError, match="not found"):
        build_context(TlsConfig(ca_credential="ca.pem"))
    with pytest.raises(TlsSetupError, match="not found"):
        build_context(TlsConfig(ca_file=tmp_path / "missing.pem"))


# ---- outbox ------------------------------------------------------------------------------


def _outbox(tmp_path: Path, max_bytes: int = 1 << 20, boot: str = "b1") -> Outbox:
    return Outbox(open_db(tmp_path / "o.sqlite", "normal"), max_bytes, boot)


def test_outbox_ids_gap_free_and_kept_across_reopen(tmp_path: Path) -> None:
    ob = _outbox(tmp_path)
    ids = [ob.append("swap.step", "2026-01-01T00:00:00.000Z", b'{"i":1}') for _ in range(5)]
    assert ids == [f"b1:{i}" for i in range(1, 6)]
    ob.delete_upto(ob.pending(0)[1].id)
    ob2 = _outbox(tmp_path, boot="b2")
    assert [e.msg_id for e in ob2.pending(0)] == ["b1:3", "b1:4", "b1:5"]
    assert ob2.append("swap.step", "2026-01-01T00:00:00.000Z", b"{}") == "b2:1"
    assert ob2.stored_bytes > 0
    wire = orjson.loads(ob2.pending(0)[0].wire(replayed=True))
    assert wire == {
        "msg_id": "b1:3",
        "type": "swap.step",
        "ts": "2026-01-01T00:00:00.000Z",
        "replayed": True,
        "details": {"i": 1},
    }
    with pytest.raises(EventTooLarge):
        ob2.append("swap.step", "t", b"x" * (1 << 19))
    ob2.delete_upto(ob2.last_id())
    assert ob2.stored_bytes == 0 and len(ob2) == 0


def test_outbox_cap_drops_oldest_non_alarm_and_names_exactly_what_went(tmp_path: Path) -> None:
    cap = 40_000
    ob = _outbox(tmp_path, cap)
    body = orjson.dumps({"pad": "x" * 300})
    stored: dict[str, str] = {}
    for i in range(300):
        kind = "alarm.raised" if i % 7 == 0 else "swap.step"
        stored[ob.append(kind, "2026-01-01T00:00:00.000Z", body)] = kind
        assert ob.stored_bytes <= cap
    assert ob.overflows >= 1
    left = {e.msg_id: e for e in ob.pending(0, 10_000)}
    overflow = [orjson.loads(e.details) for e in left.values() if e.type == "outbox.overflow"]
    named = {
        f"{r['boot_id']}:{s}"
        for o in overflow
        for r in o["ranges"]
        for s in range(r["first_seq"], r["last_seq"] + 1)
    }
    lost = set(stored) - set(left)
    assert named == lost and sum(o["dropped_count"] for o in overflow) == len(lost)
    # Only unprotected events were dropped; every alarm is still there.
    assert all(stored[m] not in PROTECTED_EVENT_TYPES for m in lost)
    assert all(m in left for m, k in stored.items() if k == "alarm.raised")
    # Every seq of this boot is either stored, or named in an overflow event.
    seqs = sorted(int(m.split(":")[1]) for m in list(left) + list(lost))
    assert seqs == list(range(1, len(seqs) + 1))


def test_outbox_never_drops_what_is_in_flight(tmp_path: Path) -> None:
    ob = _outbox(tmp_path, 20_000)
    body = orjson.dumps({"pad": "x" * 200})
    first = [ob.append("swap.step", "t", body) for _ in range(5)]
    ob.inflight_upto = ob.pending(0)[4].id
    for _ in range(200):
        ob.append("swap.step", "t", body)
    assert [e.msg_id for e in ob.pending(0, 5)] == first


# ---- commands ----------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _cmd(cmd_id: str | None, params: dict[str, Any], ttl_s: float = 60.0, **extra: Any) -> bytes:
    d: dict[str, Any] = {"expires_at": iso(NOW + timedelta(seconds=ttl_s)), "params": params}
    if cmd_id is not None:
        d["cmd_id"] = cmd_id
    d.update(extra)
    return orjson.dumps(d)


class _Env:
    def __init__(self, tmp_path: Path, commands: dict[str, Any] | None = None, **cfg: Any) -> None:
        self.clock = ManualClock(wall=NOW)
        self.target = InMemoryTarget()
        self.db = open_db(tmp_path / "c.sqlite", "normal")
        self.cfg = TelemetryConfig.model_validate({"outbox_path": tmp_path / "x", **cfg})
        self.limits = CommandsConfig.model_validate(commands or {})
        self.service = command_service(self.target, self.limits, self.cfg, self.clock)
        self.proc = self.make()

    def make(self) -> CommandProcessor:
        store = CommandStore(self.db, self.limits.dedupe_max)
        return CommandProcessor(self.cfg, self.service, store, self.clock, limits=self.limits)

    async def run(self, name: str, payload: bytes) -> dict[str, Any]:
        out: dict[str, Any] = orjson.loads(await self.proc.handle(name, payload))
        return out


def _code(r: dict[str, Any]) -> str | None:
    return r["error"]["code"] if r["error"] else None


async def test_every_error_code(tmp_path: Path) -> None:
    e = _Env(tmp_path, commands={"remote": {"manual": "deny"}})
    vu = iso(NOW + timedelta(hours=1))
    cases: list[tuple[str, bytes, str | None]] = [
        ("set_mode", b"\xff\xfe", "bad_json"),
        ("set_mode", b"[1, 2]", "bad_json"),
        ("set_mode", b'{"expires_at": "x"}', "invalid_params"),
        ("set_mode", _cmd("a1", {"mode": "turbo"}), "invalid_params"),
        ("set_mode", _cmd("a2", {"mode": "drain", "extra": 1}), "invalid_params"),
        ("set_mode", _cmd("a3", {"mode": "drain"}, bogus=True), "invalid_params"),
        ("launch", _cmd("a4", {}), "unknown_command"),
        ("manual", _cmd("a5", {"enabled": True}), "not_allowed"),
        ("reset_fault", _cmd("a6", {}), "not_allowed"),
        (
            "set_mode",
            _cmd("a7", {"mode": "drain"}, ttl_s=-6),
            "expired",
        ),  # beyond the 5 s tolerance
        ("set_mode", _cmd("a8", {"mode": "drain"}, ttl_s=10 * 86400), "out_of_range"),
        ("set_power_limit", _cmd("a9", {"power_kw": -5, "valid_until": vu}), "out_of_range"),
        ("set_power_limit", _cmd("a10", {"power_kw": 5}), "invalid_params"),
        ("set_power_limit", _cmd("a11", {"power_kw": "5", "valid_until": vu}), "invalid_params"),
        (
            "set_power_limit",
            _cmd("a12", {"power_kw": 5, "valid_until": iso(NOW - timedelta(seconds=1))}),
            "out_of_range",
        ),
        (
            "set_power_limit",
            _cmd("a13", {"power_kw": 5, "valid_until": iso(NOW + timedelta(days=3))}),
            "out_of_range",
        ),
        ("set_power_limit", _cmd("a14", {"power_kw": 250, "valid_until": vu}), None),
        ("set_mode", _cmd("a15", {"mode": "maintenance"}), None),
        ("start_swap", _cmd("a16", {"vehicle_id": "V", "pack_type": "A"}), "rejected"),
    ]
    for name, payload, code in cases:
        r = await e.run(name, payload)
        assert _code(r) == code, (name, payload, r)
        assert r["ok"] is (code is None)
        assert r["ts"] == "2026-01-01T00:00:00.000Z"
        assert set(r) == {"cmd_id", "ok", "error", "ts"}
    assert e.target.power_limit_kw == 250 and e.target.mode == "maintenance"
    assert [c for c, _ in e.target.calls] == ["set_power_limit", "set_mode", "start_swap"]
    e.db.close()


async def test_reset_fault_allowed_by_config_and_refresh(tmp_path: Path) -> None:
    e = _Env(tmp_path, commands={"remote": {"reset_fault": "allow"}})
    e.target.fault_latched = True
    assert _code(await e.run("reset_fault", _cmd("r1", {}))) is None
    assert _code(await e.run("reset_fault", _cmd("r2", {}))) == "rejected"
    assert _code(await e.run("refresh", _cmd("r3", {}))) is None
    assert e.target.refreshes == 1
    e.db.close()


async def test_repeat_is_byte_identical_acts_once_also_after_restart(tmp_path: Path) -> None:
    e = _Env(tmp_path)
    p = _cmd("x1", {"mode": "drain"})
    first = await e.proc.handle("set_mode", p)
    e.clock.advance(5)
    assert await e.proc.handle("set_mode", p) == first
    assert await e.proc.handle("set_mode", _cmd("x1", {"mode": "normal"})) == first
    e.proc = e.make()  # a restart: new processor, same database
    assert await e.proc.handle("set_mode", p) == first
    assert len(e.target.calls) == 1 and e.target.mode == "drain"
    # After expires_at the command is refused (the stored result has served its purpose).
    e.clock.advance(3600 + 60)
    assert _code(await e.run("set_mode", p)) == "expired"
    assert len(e.target.calls) == 1
    e.db.close()


async def test_command_interrupted_by_a_restart_is_never_run_twice(tmp_path: Path) -> None:
    e = _Env(tmp_path)
    store = CommandStore(e.db)
    store.begin("y1", NOW.timestamp() + 60, NOW.timestamp())  # crashed mid-dispatch
    r = await e.run("set_mode", _cmd("y1", {"mode": "drain"}))
    assert _code(r) == "rejected" and "restart" in r["error"]["message"]
    assert e.target.calls == []
    e.db.close()


async def test_station_errors_and_slow_station_become_rejected(tmp_path: Path) -> None:
    e = _Env(tmp_path, command_timeout_s=0.05)

    async def station(params: object) -> None:
        import asyncio

        if isinstance(params, SetModeParams):
            await asyncio.sleep(5)
        raise RuntimeError("boom")

    e.target.carry_out = station  # type: ignore[method-assign,assignment]
    r = await e.run("manual", _cmd("z1", {"enabled": True, "swap_id": "SW-1"}))
    assert _code(r) == "rejected" and "internal error" in r["error"]["message"]
    r = await e.run("set_mode", _cmd("z2", {"mode": "drain"}))
    assert _code(r) == "rejected" and "did not answer" in r["error"]["message"]
    e.db.close()


def test_alarm_events_follow_the_manager_and_never_break_raising(clock: ManualClock) -> None:
    from edge.alarms import AlarmManager
    from edge.telemetry.alarm_events import AlarmEvents, alarm_refs
    from edge.telemetry.models import Details
    from edge.telemetry.outbox import OutboxError

    class Sink:
        def __init__(self) -> None:
            self.got: list[tuple[str, dict[str, Any]]] = []
            self.fail = False

        def emit_event(self, event_type: str, details: Details) -> str:
            if self.fail:
                raise OutboxError("disk full")
            self.got.append((event_type, details.model_dump(mode="json")))
            return "b:1"

    mgr = AlarmManager(clock)
    sink = Sink()
    AlarmEvents(mgr, sink)
    r = mgr.raiser("slot")
    r.raise_alarm("pack.fault", "s01", "BSM flag")
    assert [a.code for a in alarm_refs(mgr.active)] == ["pack.fault"]
    r.clear_alarm("pack.fault", "s01")
    assert [(t, d["code"], d["source"]) for t, d in sink.got] == [
        ("alarm.raised", "pack.fault", "s01"),
        ("alarm.cleared", "pack.fault", "s01"),
    ]
    assert sink.got[0][1]["raised_at"] == "2026-01-01T00:00:00.000Z"
    sink.fail = True
    r.raise_alarm("pack.fault", "s02")  # the safety path carries on
    assert mgr.is_active("pack.fault", "s02")


def test_emit_event_checks_type_and_details_and_stores_before_returning(tmp_path: Path) -> None:
    from edge.telemetry.models import SwapStarted
    from edge.telemetry.service import Telemetry, UnknownEventType

    cfg = TelemetryConfig.model_validate({"outbox_path": tmp_path / "o.sqlite"})
    tel = Telemetry(
        "st1", MqttConfig(), cfg, command_service(InMemoryTarget()), boot_id="abc", version="t"
    )
    try:
        with pytest.raises(UnknownEventType):
            tel.emit_event("swap.teleported", {})
        with pytest.raises(ValidationError):
            tel.emit_event("swap.failed", {"swap_id": "w1"})  # reason missing
        with pytest.raises(ValidationError, match="lane"):
            SwapStarted(swap_id="w1", lane=2)  # type: ignore[call-arg]  # not in the contract
        with pytest.raises(ValidationError, match="lane"):
            tel.emit_event("swap.started", {"swap_id": "w1", "lane": 2})
        assert tel.emit_event("swap.started", SwapStarted(swap_id="w1", vehicle_id="V1")) == "abc:1"
        assert tel.emit_event("charge.started", {"slot_id": "s1"}) == "abc:2"
        stored = tel.outbox.pending(0)
        assert [orjson.loads(e.details) for e in stored] == [
            {"swap_id": "w1", "vehicle_id": "V1"}
            | dict.fromkeys(
                [
                    "pack_type",
                    "announced_pack_id",
                    "full_pack_id",
                    "full_slot",
                    "store_slot",
                    "soc_pct",
                ]
            ),
            {"slot_id": "s1", "pack_id": None},
        ]
    finally:
        tel.close()
