"""MQTT plumbing the service needs beyond aiomqtt: reconnect backoff, a replay rate limiter and a
client that reports PUBACK refusals (aiomqtt ignores MQTT 5 reason codes)."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.core.clock import Clock
from edge.telemetry.tls import TrackingContext

UNSUPPORTED_VERSION = 0x84  # MQTT 5 CONNACK reason (paho maps 3.1.1's return code 1 onto it)


class LinkState(StrEnum):
    STOPPED = "stopped"  # run() not started, or returned
    CONNECTING = "connecting"  # one connection attempt in progress
    CONNECTED = "connected"  # birth published; telemetry, events and commands flowing
    BACKOFF = "backoff"  # waiting before the next attempt


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code (MQTT 5)."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish on {topic}: {reason}")
        self.reason = reason


class RateLimiter:
    """Token bucket on the injected clock: `rate_per_s` on average, bursts of 0.1 s worth."""

    def __init__(self, clock: Clock, rate_per_s: float) -> None:
        self._clock = clock
        self.rate = rate_per_s
        self.burst = max(1.0, rate_per_s / 10)
        self._tokens = self.burst
        self._last = clock.monotonic()

    async def acquire(self) -> None:
        while True:
            now = self._clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            # Refill in chunks: a sleep shorter than the loop's resolution would only drift.
            await self._clock.sleep(max((1 - self._tokens) / self.rate, 0.005))


class Client(aiomqtt.Client):
    """aiomqtt's client plus: publish_confirmed() raises on a refused PUBACK, and
    wait_disconnected() returns (raising MqttError) when the connection drops."""

    def __init__(self, *args: Any, max_packet_bytes: int | None = None, **kwargs: Any) -> None:
        if max_packet_bytes is not None and kwargs.get("protocol") == aiomqtt.ProtocolVersion.V5:
            # MQTT 5: the broker must not send us a larger packet (it drops it instead).
            props = kwargs.get("properties") or Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.MaximumPacketSize = max_packet_bytes
            kwargs["properties"] = props
        super().__init__(*args, **kwargs)
        self.packets_too_large = 0
        if max_packet_bytes is not None:
            self._guard_packet_size(max_packet_bytes)
        self._refused: dict[int, ReasonCode] = {}
        self.pending_calls_threshold = 10_000  # our windows are bounded; no warning per call
        tls = kwargs.get("tls_context")
        self._tls = tls if isinstance(tls, TrackingContext) else None
        # Set when the broker closed the connection before any CONNACK: RabbitMQ 3.x does that
        # to an MQTT 5 CONNECT it cannot parse (aiomqtt would wait out the whole timeout).
        self.closed_before_connack = False

    def _guard_packet_size(self, limit: int) -> None:
        """A broker that ignores the limit (MQTT 3.1.1 has none) still cannot make us read a
        huge packet: once its header announces more than `limit` bytes, the next read fails
        and the connection is dropped before a byte of the body is read. paho reads a packet
        into one growing bytes object, so 40 MB would stall the event loop for seconds."""
        paho_client = self._client
        read = paho_client._sock_recv

        def guarded(bufsize: int) -> bytes:
            packet = paho_client._in_packet
            if packet["have_remaining"] and packet["remaining_length"] > limit:
                self.packets_too_large += 1
                raise OSError(f"inbound packet of {packet['remaining_length']} bytes > {limit}")
            return read(bufsize)

        paho_client._sock_recv = guarded  # type: ignore[method-assign]

    async def __aenter__(self) -> Self:
        try:
            return await super().__aenter__()
        except BaseException:
            # aiomqtt leaves paho's socket (and its reader) behind after a failed attempt.
            self._client._sock_close()
            if self._tls is not None:
                self._tls.close_strays()
            raise

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any = None,
    ) -> None:
        if not self._connected.done():
            self.closed_before_connack = True
            self._connected.set_exception(
                aiomqtt.MqttError("the broker closed the connection before its CONNACK")
            )
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def refused_mqtt5(self, e: BaseException) -> bool:
        """The broker turned an MQTT 5 CONNECT away: CONNACK "unsupported protocol version"
        (NATS), or a close before any CONNACK (RabbitMQ 3.x)."""
        if isinstance(e, MqttConnectError):
            rc = e.rc
            return (rc.value if isinstance(rc, ReasonCode) else rc) in (1, UNSUPPORTED_VERSION)
        return self.closed_before_connack

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._refused[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            # The disconnect reason is logged by the caller; mark it retrieved so asyncio does
            # not report "Future exception was never retrieved" when nobody awaited it.
            if self._disconnected.done() and not self._disconnected.cancelled():
                self._disconnected.exception()

    async def publish_confirmed(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        """Like publish(), but a refusal by the broker is an error, not a success."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=None)
        reason = self._refused.pop(info.mid, None)
        if reason is not None:
            raise PublishRefused(topic, reason)

    async def publish_qos0_batch(self, items: list[tuple[str, bytes]]) -> None:
        """Queue every message with paho at once and wait for the last one's write: paho sends
        in order, so all are on the wire (one loop turn per batch instead of one per message)."""
        if not items:
            return
        for topic, payload in items[:-1]:
            info = self._client.publish(topic, payload, 0, False)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        await self.publish(items[-1][0], items[-1][1], qos=0)

    async def wait_disconnected(self) -> None:
        try:
            await asyncio.shield(self._disconnected)
        except aiomqtt.MqttError:
            raise
        except Exception as e:
            raise aiomqtt.MqttError(f"connection lost: {e!r}") from e
        raise aiomqtt.MqttError("disconnected")
