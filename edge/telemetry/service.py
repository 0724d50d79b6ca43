"""The telemetry service: the station's one door to MQTT.

The station calls the sync, cheap methods (`update_*`, `emit_event`); `run()` is the one task
that owns the broker connection: reconnect with capped backoff and jitter, a retained will and
birth on `<root>/status`, live telemetry on change, events from the outbox (in order, PUBACK
before delete), commands in and results out. Live telemetry never waits behind a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import sqlite3
from collections import deque
from collections.abc import Mapping
from typing import Any

import aiomqtt
import orjson
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from drivers.core.aio import raise_if_cancelled
from drivers.core.alarm_sink import AlarmSink
from drivers.core.backoff import Backoff
from drivers.core.clock import Clock, SystemClock, utc_iso
from drivers.core.log import get_logger
from edge.alarms import AlarmCode
from edge.operator.config import CommandsConfig
from edge.statefiles import StateFileError, outbox_advice
from edge.telemetry.changes import ChangeTracker
from edge.telemetry.commands import CommandProcessor, CommandStore
from edge.telemetry.config import MqttConfig, TelemetryConfig
from edge.telemetry.link import Client, LinkState, PublishRefused, RateLimiter
from edge.telemetry.models import (
    EVENT_DETAILS,
    CommandError,
    CommandExecuted,
    Details,
    EventType,
    RobotTelemetry,
    SlotTelemetry,
    StationTelemetry,
    StatusPayload,
)
from edge.telemetry.outbox import Outbox, OutboxError, open_db
from edge.telemetry.target import CommandTarget
from edge.telemetry.tls import TlsSetupError, build_context
from edge.telemetry.topics import Topics, check_level

log = get_logger("telemetry")

MAX_PAYLOAD_BYTES = 128 * 1024
PACKET_OVERHEAD_BYTES = 1024  # topic, properties and headers around a command payload
EVENT_BATCH = 200
EVENT_WINDOW = 16  # QoS 1 publishes in flight (paho's own limit is 20)
STOP_PUBLISH_TIMEOUT_S = 2.0


class UnknownEventType(KeyError):
    pass


class _StopSession(Exception):  # noqa: N818 - control flow inside the session TaskGroup
    pass


class Telemetry:
    def __init__(
        self,
        station_id: str,
        mqtt: MqttConfig,
        cfg: TelemetryConfig,
        target: CommandTarget,
        *,
        clock: Clock | None = None,
        version: str | None = None,
        alarms: AlarmSink | None = None,
        boot_id: str | None = None,
        rng: random.Random | None = None,
        commands: CommandsConfig | None = None,
    ) -> None:
        if version is None:
            from edge.version import VERSION

            version = VERSION
        self.station_id = check_level(station_id, "station id")
        self.mqtt = mqtt
        self.cfg = cfg
        self.version = version
        self.topics = Topics.for_station(mqtt.prefix, station_id)
        self._clock: Clock = clock or SystemClock()
        self._alarms = alarms
        try:
            self._db = open_db(cfg.outbox_path, cfg.outbox_synchronous)
            self.outbox = Outbox(self._db, cfg.outbox_max_bytes, boot_id)
        except (sqlite3.DatabaseError, OutboxError) as e:
            raise StateFileError(cfg.outbox_path, str(e), outbox_advice()) from e
        self.command_limits = commands or CommandsConfig()
        self.commands = CommandProcessor(
            cfg,
            target,
            CommandStore(self._db, self.command_limits.dedupe_max),
            self._clock,
            self._audit,
            limits=self.command_limits,
        )
        self._tracker = ChangeTracker(cfg.deadbands, cfg.min_interval_s, cfg.refresh_s)
        self._key_topic: dict[str, str] = {}
        self._backoff = Backoff(mqtt.backoff_initial_s, mqtt.backoff_max_s, rng=rng)
        self._protocol = (
            aiomqtt.ProtocolVersion.V5 if mqtt.protocol == "5" else aiomqtt.ProtocolVersion.V311
        )
        self._changed = asyncio.Event()
        self._events_ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.state = LinkState.STOPPED
        self._replay_upto = 0
        self._overflow_alarm = False
        # Counters for health and benches.
        self.connects = 0
        self.telemetry_published = 0
        self.events_published = 0
        self.events_replayed = 0
        self.events_refused = 0
        self.commands_bad_topic = 0

    def stats(self) -> dict[str, object]:
        """For health and `swapd ctl status`."""
        return {
            "state": str(self.state),
            "protocol": self.protocol,
            "boot_id": self.boot_id,
            "connects": self.connects,
            "failures": self.failures,
            "outbox_events": len(self.outbox),
            "outbox_bytes": self.outbox.stored_bytes,
            "events_emitted": self.outbox.seq,
            "events_published": self.events_published,
            "events_replayed": self.events_replayed,
            "events_refused": self.events_refused,
            "events_dropped": self.outbox.dropped_total,
            "telemetry_published": self.telemetry_published,
            "commands_handled": self.commands.handled,
            "commands_refused": self.commands.refused,
            "commands_too_large": self.commands.too_large,
            "commands_busy": self.commands.busy,
        }

    @property
    def protocol(self) -> str:
        """The MQTT version asked for next: "3.1.1" once a broker refused 5."""
        return "5" if self._protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"

    @property
    def failures(self) -> int:
        """Connection attempts failed in a row (0 while connected)."""
        return self._backoff.failures

    @property
    def boot_id(self) -> str:
        return self.outbox.boot_id

    # ---- the station's side (sync, cheap, never waits on the broker) ---------------------

    def update_station(self, t: StationTelemetry) -> None:
        self._set("station", self.topics.telemetry_station, t.model_dump(mode="json"))

    def update_slot(self, slot_id: str, t: SlotTelemetry) -> None:
        key = "slot/" + slot_id
        topic = self._key_topic.get(key) or self.topics.telemetry_slot(slot_id)
        values = t.model_dump(mode="json")
        values["slot_id"] = slot_id
        self._set(key, topic, values)

    def update_robot(self, t: RobotTelemetry) -> None:
        self._set("robot", self.topics.telemetry_robot, t.model_dump(mode="json"))

    def _set(self, key: str, topic: str, values: dict[str, Any]) -> None:
        self._key_topic[key] = topic
        if self._tracker.set(key, values):
            self._changed.set()

    def refresh(self) -> None:
        """Republish the full current state now (the `refresh` command)."""
        self._tracker.force_all()
        self._changed.set()

    def emit_event(self, event_type: str, details: Details | Mapping[str, Any]) -> str:
        """Store an event durably and queue it for the broker; returns its msg_id."""
        try:
            model = EVENT_DETAILS[EventType(event_type)]
        except ValueError:
            raise UnknownEventType(event_type) from None
        if isinstance(details, model):
            d = details
        else:
            raw = details.model_dump() if isinstance(details, Details) else dict(details)
            d = model.model_validate(raw)
        body = orjson.dumps(d.model_dump(mode="json", by_alias=True))
        if len(body) > MAX_PAYLOAD_BYTES - 1024:
            raise ValueError(f"event {event_type} details of {len(body)} bytes are too large")
        overflows = self.outbox.overflows
        msg_id = self.outbox.append(event_type, utc_iso(self._clock.now()), body)
        self._events_ready.set()
        if self.outbox.overflows != overflows and not self._overflow_alarm:
            self._overflow_alarm = True
            if self._alarms is not None:
                self._alarms.raise_alarm(
                    AlarmCode.OUTBOX_OVERFLOW,
                    "outbox",
                    f"{self.outbox.dropped_total} events dropped",
                )
        return msg_id

    def _audit(self, name: str, cmd_id: str, error: CommandError | None) -> None:
        """Every command that reached the station leaves a durable trace."""
        self.emit_event(
            EventType.COMMAND_EXECUTED,
            CommandExecuted(
                cmd_id=cmd_id,
                command=name,
                ok=error is None,
                error_code=error.code if error is not None else None,
            ),
        )

    # ---- the owner task -----------------------------------------------------------------

    def stop(self) -> None:
        """Orderly stop: `online: false` is published, then `run()` returns."""
        self._stop.set()

    def close(self) -> None:
        self._db.close()

    def _status(self, online: bool, with_ts: bool = True) -> bytes:
        s = StatusPayload(
            online=online,
            boot_id=self.boot_id,
            version=self.version,
            ts=utc_iso(self._clock.now()) if with_ts else None,
        )
        return orjson.dumps(s.model_dump(mode="json"))

    def _make_client(self, protocol: aiomqtt.ProtocolVersion) -> Client:
        m = self.mqtt
        return Client(
            m.host,
            m.port,
            username=m.username,
            password=m.resolve_password() if m.username is not None else None,
            identifier=f"swapd-{self.station_id}",
            protocol=protocol,
            clean_session=True if protocol is aiomqtt.ProtocolVersion.V311 else None,
            keepalive=m.keepalive_s,
            timeout=m.connect_timeout_s,
            will=aiomqtt.Will(self.topics.status, self._status(False, False), qos=1, retain=True),
            tls_context=build_context(m.tls) if m.tls is not None else None,
            # Bounded input: the broker never sends an MQTT 5 client a larger packet, and
            # paho's queue of received messages is bounded (beyond it they are dropped).
            max_packet_bytes=self.command_limits.max_payload_bytes + PACKET_OVERHEAD_BYTES,
            max_queued_incoming_messages=self.command_limits.queue_size,
            # Small messages, latency matters: no Nagle delay (paho does not set it).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def run(self) -> None:
        """Connect, serve, reconnect, until stop() (or cancellation)."""
        if not self.mqtt.enabled:
            log.info("mqtt disabled; events are kept in the outbox")
            await self._stop.wait()
            return
        try:
            while not self._stop.is_set():
                self.state = LinkState.CONNECTING
                try:
                    await self._connection()
                except* (aiomqtt.MqttError, TlsSetupError, OutboxError, OSError) as eg:
                    self._failed(eg.exceptions[0])
                finally:
                    self._end_session()
                if self._stop.is_set():
                    break
                self.state = LinkState.BACKOFF
                await self._wait(self._stop, self._backoff.next_delay())
        finally:
            self.state = LinkState.STOPPED

    async def _connection(self) -> None:
        """One connection, from connect to disconnect. A stop while still connecting cancels
        the attempt (bounded shutdown); once connected the session says offline itself."""
        attempt = asyncio.create_task(self._connect_and_serve(), name="mqtt-connection")
        stop_wait = asyncio.create_task(self._stop.wait(), name="mqtt-stop-wait")
        try:
            await asyncio.wait({attempt, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done() and self.state is LinkState.CONNECTING:
                attempt.cancel()
            try:
                await attempt
            except asyncio.CancelledError:
                if not (attempt.cancelled() and self._stop.is_set()):
                    raise
                raise_if_cancelled()  # ours too, not only the attempt's
        finally:
            stop_wait.cancel()
            if not attempt.done():
                attempt.cancel()

    async def _connect_and_serve(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            client = await self._connect(stack)
            await self._session(client)

    async def _connect(self, stack: contextlib.AsyncExitStack) -> Client:
        """Connect with the configured protocol; a broker that turns MQTT 5 away (NATS, RabbitMQ
        3.x) gets MQTT 3.1.1 in the same attempt, and keeps it for every later reconnect."""
        client = self._make_client(self._protocol)
        try:
            return await stack.enter_async_context(client)
        except aiomqtt.MqttError as e:
            if self._protocol is not aiomqtt.ProtocolVersion.V5 or not client.refused_mqtt5(e):
                raise
        client = await stack.enter_async_context(self._make_client(aiomqtt.ProtocolVersion.V311))
        self._protocol = aiomqtt.ProtocolVersion.V311
        log.warning(
            "broker refuses MQTT 5; using MQTT 3.1.1 from now on "
            "(no PUBACK reason codes: refusals by ACL look like deliveries)",
            host=self.mqtt.host,
            port=self.mqtt.port,
        )
        return client

    def _failed(self, e: BaseException) -> None:
        level = logging.WARNING if self._backoff.failures == 0 else logging.DEBUG
        if isinstance(e, OutboxError):
            level = logging.ERROR
        log.log(level, "mqtt %s:%d: %s; reconnecting", self.mqtt.host, self.mqtt.port, e)
        if isinstance(e, MqttConnectError) and _rc_value(e.rc) in (4, 5, 134, 135):
            self._backoff.to_max()  # bad credentials: retrying soon will not help

    def _end_session(self) -> None:
        self.connected.clear()
        self.outbox.inflight_upto = 0

    async def _session(self, client: Client) -> None:
        self.connects += 1
        await client.publish_confirmed(self.topics.status, self._status(True), qos=1, retain=True)
        await client.subscribe(self.topics.cmd_filter, qos=1)
        if self._backoff.failures:
            log.warning("mqtt connected again", failures=self._backoff.failures)
        self._backoff.reset()
        self._tracker.force_all()
        self._replay_upto = self.outbox.last_id()
        self.state = LinkState.CONNECTED
        self.connected.set()
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(client.wait_disconnected(), name="mqtt-disconnect-watch")
                    tg.create_task(self._telemetry_loop(client), name="mqtt-telemetry")
                    tg.create_task(self._event_loop(client), name="mqtt-events")
                    tg.create_task(self._command_loop(client), name="mqtt-commands")
                    tg.create_task(self._stop_watch(), name="mqtt-stop-watch")
            except* _StopSession:
                await self._say_offline(client)
        except asyncio.CancelledError:
            await self._say_offline(client)
            raise

    async def _say_offline(self, client: Client) -> None:
        try:
            async with asyncio.timeout(STOP_PUBLISH_TIMEOUT_S):
                await client.publish_confirmed(
                    self.topics.status, self._status(False), qos=1, retain=True
                )
        except (TimeoutError, aiomqtt.MqttError) as e:
            log.warning("could not publish offline status", error=str(e))

    async def _stop_watch(self) -> None:
        await self._stop.wait()
        raise _StopSession

    async def _wait(self, event: asyncio.Event, timeout_s: float | None) -> None:
        """Until `event` is set or `timeout_s` passes on the injected clock."""
        raise_if_cancelled()
        if event.is_set():
            return
        if timeout_s is None:
            await event.wait()
            return
        waiter = asyncio.create_task(event.wait(), name="telemetry-wait-event")
        sleeper = asyncio.create_task(self._clock.sleep(timeout_s), name="telemetry-wait-timer")
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    async def _telemetry_loop(self, client: Client) -> None:
        while True:
            self._changed.clear()
            now = self._clock.monotonic()
            due = self._tracker.due(now)
            if due:
                ts = utc_iso(self._clock.now())
                batch = []
                for key in due:
                    payload = dict(self._tracker.current(key))
                    payload["ts"] = ts
                    batch.append((self._key_topic[key], orjson.dumps(payload)))
                    self._tracker.mark_published(key, now)
                await client.publish_qos0_batch(batch)
                self.telemetry_published += len(batch)
            deadline = self._tracker.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock.monotonic())
            await self._wait(self._changed, timeout)

    async def _event_loop(self, client: Client) -> None:
        """Outbox -> broker in id order, EVENT_WINDOW publishes in flight; a row is deleted only
        once it and every row before it have their PUBACK."""
        limiter = RateLimiter(self._clock, self.cfg.replay_rate_per_s)
        window: deque[tuple[int, bool, asyncio.Task[None]]] = deque()
        queued_upto = acked_upto = deleted_upto = 0

        async def settle() -> None:
            nonlocal acked_upto
            event_id, replayed, task = window.popleft()
            try:
                await task
                # Our cancel went to the publish task; one that swallowed it (wait_for on 3.11)
                # returned normally, and the loop would sit in `_events_ready.wait()` for ever.
                raise_if_cancelled()
            except PublishRefused as e:
                # The broker will refuse it again (ACL, size): do not stall every later event.
                self.events_refused += 1
                log.error("event dropped", event_id=event_id, error=str(e))
            acked_upto = event_id
            self.events_published += 1
            self.events_replayed += replayed

        try:
            while True:
                raise_if_cancelled()
                self._events_ready.clear()
                overflows = self.outbox.overflows
                batch = self.outbox.pending(queued_upto, EVENT_BATCH)
                if not batch:
                    while window:
                        await settle()
                    if acked_upto > deleted_upto:
                        self.outbox.delete_upto(acked_upto)
                        deleted_upto = acked_upto
                        self._maybe_clear_overflow()
                    if not self._events_ready.is_set():
                        await self._events_ready.wait()
                    continue
                for ev in batch:
                    if self.outbox.overflows != overflows:
                        break  # rows were dropped under us: fetch again
                    replayed = ev.id <= self._replay_upto
                    if replayed:
                        await limiter.acquire()
                    while len(window) >= EVENT_WINDOW:
                        await settle()
                    self.outbox.inflight_upto = ev.id
                    publish = client.publish_confirmed(
                        self.topics.event(ev.type), ev.wire(replayed), qos=1
                    )
                    task = asyncio.create_task(publish, name="mqtt-event-publish")
                    window.append((ev.id, replayed, task))
                    queued_upto = ev.id
                while window and window[0][2].done():
                    await settle()
                if acked_upto - deleted_upto >= EVENT_BATCH:
                    self.outbox.delete_upto(acked_upto)
                    deleted_upto = acked_upto
        finally:
            # Count what the broker already acknowledged, then abandon the rest (replayed later).
            while window and window[0][2].done() and not window[0][2].cancelled():
                if window[0][2].exception() is not None:
                    break  # refused ones are sent (and refused) again next time
                event_id, replayed, _ = window.popleft()
                acked_upto = event_id
                self.events_published += 1
                self.events_replayed += replayed
            for _, _, task in window:
                task.cancel()
            for _, _, task in window:
                with contextlib.suppress(BaseException):
                    await task
            if acked_upto > deleted_upto:
                self.outbox.delete_upto(acked_upto)

    def _maybe_clear_overflow(self) -> None:
        if self._overflow_alarm and len(self.outbox) == 0:
            self._overflow_alarm = False
            if self._alarms is not None:
                self._alarms.clear_alarm(AlarmCode.OUTBOX_OVERFLOW, "outbox")

    async def _command_loop(self, client: Client) -> None:
        async for msg in client.messages:
            try:
                name = self.topics.command_name(msg.topic.value)
            except ValueError:
                self.commands_bad_topic += 1
                continue
            result = await self.commands.handle(name, bytes(msg.payload))
            try:
                await client.publish_confirmed(self.topics.cmd_result(name), result, qos=1)
            except PublishRefused as e:
                # A result topic the broker refuses (ACL) must not cost the connection; the
                # result is stored, a repeat of the command gets it.
                log.error("command result refused", error=str(e))
            raise_if_cancelled()


def _rc_value(rc: int | ReasonCode | None) -> int | None:
    return rc.value if isinstance(rc, ReasonCode) else rc
