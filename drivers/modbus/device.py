"""The device owner: polls one Modbus device (one unit id) by its map, tracks quality, writes
and verifies setpoints, feeds its watchdog, and takes it offline and back with one alarm.

Consumers only know point names: `await dev.write("current_limit_a", 120.0)`,
`dev.snapshot()["output_voltage_v"]`, `await dev.next_update()` / `async for s in dev.updates()`.
The device's task is `run()`; its requests go through the `ModbusLink` that owns the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from drivers.core.alarm_sink import AlarmSink
from drivers.core.backoff import Backoff
from drivers.core.clock import Clock
from drivers.core.log import get_logger
from drivers.core.quality import Quality
from drivers.modbus.codec import Value, decode_bit, decode_words, encode
from drivers.modbus.config import ModbusTiming
from drivers.modbus.errors import (
    DeviceOfflineError,
    ModbusCommError,
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusMalformedResponse,
    ModbusTimeoutError,
    PointError,
    WriteVerifyError,
)
from drivers.modbus.link import Bits, ModbusLink, Words
from drivers.modbus.planner import DEFAULT_MAX_GAP_TCP, Block, plan_map, readback_block
from drivers.modbus.policy import AdaptiveTimeout, OfflineDetector
from drivers.modbus.regmap import RegisterMap

log = get_logger("modbus")

ALARM_OFFLINE = "modbus.offline"
ALARM_WRITE_FAILED = "modbus.write_failed"
ALARM_INVALID_VALUE = "modbus.invalid_value"
READBACK_SETTLE_S = 0.5  # how long a device may take to echo a write-only value


class DeviceState(StrEnum):
    STOPPED = "stopped"  # the owner task is not running
    CONNECTING = "connecting"  # started, no answer yet
    ONLINE = "online"  # answering; values of the last cycle are fresh
    DEGRADED = "degraded"  # missed one or more cycles, not yet offline; values stale
    OFFLINE = "offline"  # N cycles without a good answer: alarm raised, probing with backoff
    RESTORING = "restoring"  # answering again: last setpoints being rewritten before ONLINE


@dataclass(frozen=True, slots=True)
class PointValue:
    value: Value | None  # last decoded value (kept when stale, for display); None if never read
    quality: Quality
    read_at: float | None  # clock.monotonic() of the read that produced `value`

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD


_NEVER = PointValue(None, Quality.STALE, None)


@dataclass(frozen=True, slots=True)
class Snapshot(Mapping[str, PointValue]):
    """The device's values after one cycle. `fresh` names the points read in that cycle."""

    device_id: str
    state: DeviceState
    cycle: int
    at: float
    points: Mapping[str, PointValue]
    fresh: frozenset[str] = frozenset()
    cycle_s: float = 0.0  # how long the cycle that produced this snapshot took

    def __getitem__(self, name: str) -> PointValue:
        return self.points[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def good(self, name: str) -> Value:
        """The value if its quality is good; raises PointError otherwise."""
        v = self.points.get(name, _NEVER)
        if v.quality is not Quality.GOOD or v.value is None:
            raise PointError(f"{self.device_id}.{name} is {v.quality}")
        return v.value


@dataclass(slots=True)
class DeviceCounters:
    requests: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    exception_responses: int = 0
    malformed: int = 0
    invalid_values: int = 0
    cycles: int = 0
    failed_cycles: int = 0
    overruns: int = 0
    writes: int = 0
    write_verify_failures: int = 0
    watchdog_feeds: int = 0
    offline_events: int = 0
    restores: int = 0
    internal_errors: int = 0  # unexpected exceptions caught by the loop (bugs), logged
    by_error: dict[str, int] = field(default_factory=dict)


class ModbusDevice:
    """Owns the polling, writing and health of one device. Start `run()` as a named task."""

    def __init__(
        self,
        device_id: str,
        regmap: RegisterMap,
        link: ModbusLink,
        *,
        unit_id: int,
        clock: Clock,
        alarms: AlarmSink,
        timing: ModbusTiming | None = None,
        max_gap: int = DEFAULT_MAX_GAP_TCP,
    ) -> None:
        self.device_id = device_id
        self.map = regmap
        self.link = link
        self.unit_id = unit_id
        self._clock = clock
        self._alarms = alarms
        t = timing or ModbusTiming()
        self.timing = t
        self._periods = {
            g: t.poll_periods_s.get(g, pg.period_s) for g, pg in regmap.poll_groups.items()
        }
        unknown = set(t.poll_periods_s) - set(self._periods)
        if unknown:
            raise ValueError(f"{device_id}: poll_periods_s names unknown groups {sorted(unknown)}")
        self.plan: dict[str, list[Block]] = plan_map(regmap, max_gap=max_gap)
        # The tick is the fastest group; slower groups join the tick on which they fall due.
        self._tick_s = (
            min(p for g, p in self._periods.items() if self.plan[g])
            if any(self.plan.values())
            else 1.0
        )
        self._timeout = AdaptiveTimeout(t.timeout_floor_s, t.timeout_max_s)
        self._backoff = Backoff(t.backoff_initial_s, t.backoff_max_s)
        self._detector = OfflineDetector(t.offline_after_cycles)
        self._values: dict[str, PointValue] = dict.fromkeys(regmap.points, _NEVER)
        # Map constants (ratings the device does not publish): good in every snapshot.
        self._constants = {
            n: PointValue(v, Quality.GOOD, None) for n, v in regmap.constants.items()
        }
        self._state = DeviceState.STOPPED
        self._cycle = 0
        self._snapshot = Snapshot(
            device_id, self._state, 0, clock.monotonic(), {**self._values, **self._constants}
        )
        self._update = asyncio.Event()
        self._cycle_started = clock.monotonic()
        self.state_changed = asyncio.Event()  # set (and replaced) on each state change
        self.online = asyncio.Event()  # set while ONLINE
        self.counters = DeviceCounters()
        self._desired: dict[str, Value] = {}
        self._unconfirmed: set[str] = set()  # desired values not yet confirmed by a read-back
        self._failed_writes: set[str] = set()
        self._invalid_alarm = False
        self._invalid_names: set[str] = set()
        wd = regmap.watchdog
        self._wd_point = wd.point if wd else None
        self._wd_period_s = t.watchdog_period_s or (wd.period_s if wd else 1.0)
        self._wd_feeding = wd is not None
        self._wd_counter = 0
        self._wd_next = 0.0
        self._due: dict[str, float] = {}

    # ---- consumer API -------------------------------------------------------------------
    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def tick_s(self) -> float:
        """The cycle period (the fastest poll group)."""
        return self._tick_s

    @property
    def timeout_s(self) -> float:
        return self._timeout.timeout_s

    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def next_update(self) -> Snapshot:
        """Wait for the end of the next cycle (or of the next failed probe while offline) and
        return its snapshot."""
        ev = self._update
        await ev.wait()
        return self._snapshot

    async def updates(self) -> AsyncIterator[Snapshot]:
        """Every snapshot from now on (a slow consumer skips to the latest)."""
        while True:
            yield await self.next_update()

    @property
    def watchdog_feeding(self) -> bool:
        return self._wd_feeding

    def stop_watchdog(self) -> None:
        """Stop feeding the device's watchdog: the device then switches its output off by itself.
        Used by the safety logic when the output must stop and writes may not get through."""
        self._wd_feeding = False

    def fail_safe(self) -> None:
        """Its service failed: stop feeding the watchdog and forget the wanted setpoints, so a
        reconnect writes the output off instead of replaying them (issue 12 item 6). The
        controller resumes feeding once it has confirmed the output off again."""
        self._wd_feeding = False
        for name in ("current_limit_a", "power_limit_kw"):
            if name in self._desired:
                self._desired[name] = 0.0
        if "enable" in self._desired:
            self._desired["enable"] = False

    def resume_watchdog(self) -> None:
        if self._wd_point is not None:
            self._wd_feeding = True
            self._wd_next = self._clock.monotonic()

    async def write(self, name: str, value: Value, *, verify: bool = True) -> None:
        """Write a point by name and confirm it by reading it back (one retry). Raises
        PointError, WriteRangeError (nothing sent), DeviceOfflineError, WriteVerifyError.
        `verify=False` is for momentary command registers the device clears by itself: sent
        once, not read back, not remembered for a reconnect; a failure raises ModbusCommError."""
        spec = self.map.point(name)
        if not spec.writable:
            raise PointError(f"{self.device_id}.{name} is read-only")
        if name == self._wd_point:
            raise PointError(f"{self.device_id}.{name} is the watchdog: the owner feeds it")
        payload = encode(spec, self.map.word_order_of(spec), name, value)
        if verify:
            self._desired[name] = value  # rewritten after a reconnect, even if this write fails
            self._unconfirmed.add(name)
        if self._state in (DeviceState.OFFLINE, DeviceState.STOPPED):
            raise DeviceOfflineError(f"{self.device_id} is {self._state}: {name} not written")
        if verify:
            await self._write_verified(name, payload)
        else:
            await self._write_raw(name, payload)

    @property
    def desired(self) -> Mapping[str, Value]:
        """The last value asked for each written point (what a reconnect writes again)."""
        return dict(self._desired)

    # ---- the owner task -----------------------------------------------------------------
    async def run(self, start_delay_s: float = 0.0) -> None:
        """The owner task. `start_delay_s` offsets this device's cycle phase, so many devices
        on one host do not all poll in the same millisecond."""
        self._set_state(DeviceState.CONNECTING)
        if start_delay_s > 0:
            await self._clock.sleep(start_delay_s)
        now = self._clock.monotonic()
        self._due = dict.fromkeys(self._periods, now)
        self._wd_next = now
        next_tick = now
        try:
            while True:
                if self._state is DeviceState.OFFLINE:
                    try:
                        await self._probe_until_back()
                    except Exception:
                        self.counters.internal_errors += 1
                        log.exception("probe failed unexpectedly", device=self.device_id)
                        await self._clock.sleep(self._backoff.max_s)
                    next_tick = self._clock.monotonic()
                    continue
                try:
                    await self._cycle_once()
                except Exception:  # a bug here must not stop the polling of this device
                    self.counters.internal_errors += 1
                    log.exception("cycle failed unexpectedly", device=self.device_id)
                if self._offline():
                    continue  # straight into backoff
                next_tick += self._tick_s
                now = self._clock.monotonic()
                if next_tick < now:
                    self.counters.overruns += 1
                    next_tick = now
                await self._clock.sleep(next_tick - now)
        finally:
            self._set_state(DeviceState.STOPPED)

    def _offline(self) -> bool:
        return self._state is DeviceState.OFFLINE

    async def _cycle_once(self) -> None:
        now = self._clock.monotonic()
        self._cycle_started = now
        due = [g for g, t in self._due.items() if now >= t - 1e-9]
        for g in due:
            nxt = self._due[g] + self._periods[g]
            self._due[g] = nxt if nxt > now else now + self._periods[g]
        fresh: set[str] = set()
        blocks = [b for g in due for b in self.plan[g]]
        silent = False
        for b in blocks:
            if silent:
                self._mark_stale(b)
                continue
            try:
                data = await self._read_block(b)
            except (ModbusTimeoutError, ModbusConnectionError):
                self._mark_stale(b)
                silent = True  # the rest of the cycle would time out too
                continue
            except (ModbusExceptionResponse, ModbusMalformedResponse):
                self._mark_stale(b)  # an answer, but not a good one: it does not count
                continue
            self._store(b, data, fresh)
        answered = self.good_cycle(fresh)
        if answered:
            await self._feed_watchdog()
        self.counters.cycles += 1
        if not answered and blocks:
            self.counters.failed_cycles += 1
        go_offline = self._detector.cycle(answered or not blocks)
        if go_offline:
            self._go_offline()
        elif answered:
            if self._state in (DeviceState.CONNECTING, DeviceState.DEGRADED):
                if self._unconfirmed:
                    # asked before the first connection or during a blip: write them now
                    try:
                        await self._restore_setpoints(only=set(self._unconfirmed))
                    except ModbusCommError as e:
                        log.debug("setpoints not yet written", device=self.device_id, error=str(e))
                self._set_state(DeviceState.ONLINE)
        elif self._state is DeviceState.ONLINE:
            self._set_state(DeviceState.DEGRADED)
        self._check_invalid_alarm()
        self._publish(frozenset(fresh))

    def good_cycle(self, fresh: set[str]) -> bool:
        """Liveness seam (issue 12): a cycle counts as an answer only if it produced at least one
        good value. Exceptions, malformed answers and all-invalid reads are silence."""
        return any(self._values[n].quality is Quality.GOOD for n in fresh)

    async def _probe_until_back(self) -> None:
        while True:
            await self._clock.sleep(self._backoff.next_delay())
            self.link.request_reconnect()
            probe = next(
                (
                    b
                    for g in sorted(self._periods, key=self._periods.__getitem__)
                    for b in self.plan[g]
                ),
                None,
            )
            try:
                if probe is not None:
                    data = await self._read_block(probe, retries=0)
                    fresh: set[str] = set()
                    self._store(probe, data, fresh)
                    if not self.good_cycle(fresh):
                        raise ModbusMalformedResponse("probe answered without a good value")
                self._set_state(DeviceState.RESTORING)
                await self._restore_setpoints()
            except ModbusCommError as e:
                log.debug("still offline", device=self.device_id, error=str(e))
                self._all_stale()
                if self._state is DeviceState.RESTORING:
                    self._set_state(DeviceState.OFFLINE)
                self._publish(frozenset())  # consumers waiting on updates still hear from us
                continue
            self._backoff.reset()
            self._detector.failed_in_row = 0
            self.counters.restores += 1
            now = self._clock.monotonic()
            self._due = dict.fromkeys(self._periods, now)
            self._wd_next = now
            self._alarms.clear_alarm(ALARM_OFFLINE, self.device_id)
            log.warning("back online", device=self.device_id)
            self._set_state(DeviceState.ONLINE)
            return

    async def _restore_setpoints(self, only: set[str] | None = None) -> None:
        # Feed the watchdog first so the device accepts the setpoints, then rewrite them in
        # map order (setpoints before enable when the map lists them so).
        await self._feed_watchdog(force=True)
        for name in self.map.points:
            if name in self._desired and (only is None or name in only):
                spec = self.map.points[name]
                payload = encode(spec, self.map.word_order_of(spec), name, self._desired[name])
                try:
                    await self._write_verified(name, payload)
                except WriteVerifyError:
                    # it answers but refuses this value: that is `modbus.write_failed` (raised),
                    # not a reason to stay offline
                    log.warning(
                        "setpoint not restored after reconnect", device=self.device_id, point=name
                    )

    def _all_stale(self) -> None:
        for name, v in self._values.items():
            if v.quality is not Quality.STALE:
                self._values[name] = PointValue(v.value, Quality.STALE, v.read_at)
        self._invalid_names.clear()

    def _go_offline(self) -> None:
        self.counters.offline_events += 1
        self._all_stale()
        self._alarms.raise_alarm(
            ALARM_OFFLINE, self.device_id, f"{self.link.name} unit {self.unit_id}: no good answer"
        )
        log.warning("offline", device=self.device_id, link=self.link.name, unit=self.unit_id)
        self._set_state(DeviceState.OFFLINE)
        self._publish(frozenset())

    # ---- requests -----------------------------------------------------------------------
    def _count_error(self, e: ModbusCommError) -> None:
        c = self.counters
        if isinstance(e, ModbusTimeoutError):
            c.timeouts += 1
        elif isinstance(e, ModbusConnectionError):
            c.connection_errors += 1
        elif isinstance(e, ModbusExceptionResponse):
            c.exception_responses += 1
        elif isinstance(e, ModbusMalformedResponse):
            c.malformed += 1
        key = type(e).__name__
        c.by_error[key] = c.by_error.get(key, 0) + 1

    async def _read_block(self, b: Block, retries: int | None = None) -> Words | Bits:
        attempts = (self.timing.retries if retries is None else retries) + 1
        for attempt in range(attempts):
            self.counters.requests += 1
            try:
                data, latency = await self.link.read(
                    self.unit_id, b.table, b.start, b.count, self._timeout.timeout_s
                )
            except ModbusCommError as e:
                self._count_error(e)
                retryable = isinstance(e, ModbusTimeoutError | ModbusMalformedResponse)
                if not retryable or attempt == attempts - 1:
                    raise
                continue
            self._timeout.observe(latency)
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _store(self, b: Block, data: Words | Bits, fresh: set[str]) -> None:
        now = self._clock.monotonic()
        for it in b.items:
            try:
                if it.words == 0:
                    value, ok = decode_bit(it.spec, bool(data[it.offset]))
                else:
                    words = data[it.offset : it.offset + it.words]
                    value, ok = decode_words(it.spec, it.order, words)
            except (ValueError, IndexError, TypeError):
                value, ok = None, False
            if not ok:
                self.counters.invalid_values += 1
                self._values[it.name] = PointValue(None, Quality.INVALID, now)
                self._invalid_names.add(it.name)
            else:
                self._values[it.name] = PointValue(value, Quality.GOOD, now)
                self._invalid_names.discard(it.name)
            fresh.add(it.name)

    def _mark_stale(self, b: Block) -> None:
        for it in b.items:
            v = self._values[it.name]
            if v.quality is not Quality.STALE:
                self._values[it.name] = PointValue(v.value, Quality.STALE, v.read_at)
            self._invalid_names.discard(it.name)

    async def _write_raw(self, name: str, payload: list[int] | bool) -> None:
        spec = self.map.points[name]
        values: Words | Bits = [payload] if isinstance(payload, bool) else payload
        self.counters.requests += 1
        self.counters.writes += 1
        try:
            await self.link.write(
                self.unit_id, spec.table, spec.address, values, self._timeout.timeout_s
            )
        except ModbusCommError as e:
            self._count_error(e)
            raise

    async def _write_verified(self, name: str, payload: list[int] | bool) -> None:
        spec = self.map.points[name]
        block = readback_block(name, spec, self.map.word_order_of(spec))
        expect: Words | Bits = [payload] if isinstance(payload, bool) else payload
        if block is None:
            # write-only without a read-back address: the device's acknowledgement is all there is
            await self._write_acknowledged(name, payload)
            return
        last = ""
        answered = False
        lost: ModbusCommError | None = None
        for _attempt in range(2):
            try:
                await self._write_raw(name, payload)
                got = await self._read_block(block, retries=0)
                if spec.access == "w":
                    got = await self._settled_readback(block, got, expect)
            except (ModbusTimeoutError, ModbusConnectionError) as e:
                last, lost = str(e), e
                continue
            except ModbusCommError as e:  # answered, but refused or garbled
                last, answered = str(e), True
                continue
            answered = True
            if list(got) == list(expect):
                fresh: set[str] = set()
                self._store(block, got, fresh)
                self._confirmed(name)
                return
            last = f"read back {list(got)} after writing {list(expect)}"
        if not answered and lost is not None:
            # nothing answered: a communication loss (the poll takes it offline), not a refusal
            raise lost
        self.counters.write_verify_failures += 1
        self._failed_writes.add(name)
        self._alarms.raise_alarm(ALARM_WRITE_FAILED, self.device_id, f"{name}: {last}")
        raise WriteVerifyError(f"{self.device_id}.{name} not confirmed: {last}")

    async def _settled_readback(
        self, block: Block, got: Words | Bits, expect: Words | Bits
    ) -> Words | Bits:
        """A device echoes a write-only value at its read-back address on its own cycle, not
        necessarily by the next request: re-read for up to READBACK_SETTLE_S."""
        deadline = self._clock.monotonic() + READBACK_SETTLE_S
        while list(got) != list(expect) and self._clock.monotonic() < deadline:
            await self._clock.sleep(READBACK_SETTLE_S / 10)
            got = await self._read_block(block, retries=0)
        return got

    async def _write_acknowledged(self, name: str, payload: list[int] | bool) -> None:
        last: ModbusCommError | None = None
        for _attempt in range(2):
            try:
                await self._write_raw(name, payload)
            except (ModbusTimeoutError, ModbusMalformedResponse) as e:
                last = e
                continue
            self._confirmed(name)
            return
        assert last is not None
        raise last

    def _confirmed(self, name: str) -> None:
        self._unconfirmed.discard(name)
        if name in self._failed_writes:
            self._failed_writes.discard(name)
            if not self._failed_writes:
                self._alarms.clear_alarm(ALARM_WRITE_FAILED, self.device_id)

    async def _feed_watchdog(self, force: bool = False) -> None:
        if self._wd_point is None or not self._wd_feeding:
            return
        now = self._clock.monotonic()
        if not force and now < self._wd_next:
            return
        self._wd_next = now + self._wd_period_s
        spec = self.map.points[self._wd_point]
        modulo = 1 << (spec.raw_bits - 1 if spec.type in ("i16", "i32") else spec.raw_bits)
        self._wd_counter = (self._wd_counter + 1) % modulo
        payload = encode(spec, self.map.word_order_of(spec), self._wd_point, self._wd_counter)
        try:
            await self._write_raw(self._wd_point, payload)
        except ModbusCommError as e:
            if force:
                raise
            log.debug("watchdog feed failed", device=self.device_id, error=str(e))
            return
        self.counters.watchdog_feeds += 1

    # ---- state and publication ----------------------------------------------------------
    def _check_invalid_alarm(self) -> None:
        invalid = bool(self._invalid_names)
        if invalid and not self._invalid_alarm:
            names = ", ".join(sorted(self._invalid_names))
            self._alarms.raise_alarm(ALARM_INVALID_VALUE, self.device_id, names)
        elif not invalid and self._invalid_alarm:
            self._alarms.clear_alarm(ALARM_INVALID_VALUE, self.device_id)
        self._invalid_alarm = invalid

    def _set_state(self, s: DeviceState) -> None:
        if s is self._state:
            return
        self._state = s
        if s is DeviceState.ONLINE:
            self.online.set()
        else:
            self.online.clear()
        ev, self.state_changed = self.state_changed, asyncio.Event()
        ev.set()

    def _publish(self, fresh: frozenset[str]) -> None:
        self._cycle += 1
        now = self._clock.monotonic()
        self._snapshot = Snapshot(
            self.device_id,
            self._state,
            self._cycle,
            now,
            {**self._values, **self._constants},
            fresh,
            now - self._cycle_started,
        )
        ev, self._update = self._update, asyncio.Event()
        ev.set()
