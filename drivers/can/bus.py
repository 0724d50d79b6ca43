"""One owner per CAN bus: a python-can Bus + Notifier on the running loop, a send queue,
counters, and error / bus-off handling with a capped reopen backoff.

Everything that happens on a bus goes through its owner: received frames are handed to one
`FrameHandler` (the slot's session runner) in the event loop; `send()` queues a frame and the
owner's task writes it. A handler that raises UnknownFrameError / MalformedFrameError gets the
frame counted and dropped; any other exception is counted as an error, never kills the bus.

Costs (bench/can_ingest.py measures them): socketcan and slcan expose a file descriptor, so the
Notifier watches it with `loop.add_reader` (no thread). The virtual bus has no fd: python-can
reads it from one thread per bus, which wakes every `notifier_timeout_s` (0.1 s) while idle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

import can
import serial

from drivers.can.codec import CanFrame, MalformedFrameError, UnknownFrameError
from drivers.can.config import CanBusConfig
from drivers.core.alarm_sink import AlarmSink
from drivers.core.backoff import Backoff
from drivers.core.clock import Clock, SystemClock
from drivers.core.log import get_logger

log = get_logger("can")

ALARM_BUS_ERROR = "can.bus_error"
CAN_ERR_BUSOFF = 0x40  # error-class bit in an error frame's id (linux/can/error.h)
MAX_FRAMES_PER_WAKEUP = 256

# `swapsock://` = pyserial's socket:// with a receive buffer (drivers/can/protocol_swapsock.py).
if "drivers.can" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("drivers.can")


class FrameHandler(Protocol):
    def __call__(self, frame: CanFrame) -> None: ...


class BusState(StrEnum):
    CLOSED = "closed"  # not started yet
    OPENING = "opening"  # constructing the python-can Bus
    OPEN = "open"  # receiving and sending
    BACKOFF = "backoff"  # the last open failed or the bus failed: waiting to reopen
    STOPPED = "stopped"  # run() ended


class BusFailure(Exception):
    """The bus broke at runtime (reader error, bus-off, repeated send failures): reopen."""


@dataclass(slots=True)
class BusCounters:
    rx: int = 0
    tx: int = 0
    errors: int = 0
    dropped: int = 0
    unknown: int = 0
    malformed: int = 0
    reopens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Reader(can.AsyncBufferedReader):
    """AsyncBufferedReader that wakes the owner's task and reports reader-thread errors."""

    def __init__(self, owner: BusOwner) -> None:
        super().__init__()
        self._owner = owner

    def on_message_received(self, msg: can.Message) -> None:
        super().on_message_received(msg)
        self._owner._wake.set()

    def on_error(self, exc: Exception) -> None:
        self._owner._fail(exc)


class _GuardedNotifier(can.Notifier):
    """On the fd path python-can lets a recv() exception escape into the loop's callback
    (and a dead socket stays readable, so it would repeat forever): report it and unwatch."""

    def _on_message_available(self, bus: can.BusABC) -> None:
        try:
            super()._on_message_available(bus)
            # A buffered slcan port may hold more frames than the one just read; the fd
            # will not signal them again, so drain them now.
            port = getattr(bus, "serialPortOrig", None)
            n = 0
            while int(getattr(port, "buffered", 0)) > 0 and n < MAX_FRAMES_PER_WAKEUP:
                msg = bus.recv(0)
                if msg is None:
                    break
                self._on_message_received(msg)
                n += 1
        except Exception as exc:  # noqa: BLE001 - any reader failure means: reopen the bus
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(bus.fileno())
            self._on_error(exc)


def _bus_kwargs(config: CanBusConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"interface": config.interface, "channel": config.channel}
    if config.interface == "slcan":
        kw["bitrate"] = config.bitrate
        kw["sleep_after_open"] = 0.0  # the 2 s default is for USB adapters resetting
        if config.channel.startswith("socket://"):
            kw["channel"] = "swapsock://" + config.channel.removeprefix("socket://")
            kw["timeout"] = 0  # reads run on the event loop: never wait in them
    elif config.interface == "virtual":
        kw["receive_own_messages"] = False
    return kw


class BusOwner:
    """Owns one CAN bus. Run `run()` as a named, supervised task; stop it by cancelling."""

    def __init__(
        self,
        name: str,
        config: CanBusConfig,
        handler: FrameHandler | None = None,
        alarms: AlarmSink | None = None,
        *,
        clock: Clock | None = None,
        send_queue_size: int = 512,
        notifier_timeout_s: float = 0.1,
        backoff: Backoff | None = None,
        max_send_failures: int = 20,
    ) -> None:
        self.name = name
        self.config = config
        self._handler = handler
        self._alarms = alarms
        self._clock = clock or SystemClock()
        self._tx: collections.deque[CanFrame] = collections.deque()
        self._send_queue_size = send_queue_size
        self._notifier_timeout_s = notifier_timeout_s
        self._backoff = backoff or Backoff(0.2, 10.0)
        self._max_send_failures = max_send_failures
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._send_failures = 0
        self._logged: set[str] = set()
        self.state = BusState.CLOSED
        self.opened = asyncio.Event()
        self.counters = BusCounters()
        self.last_error = ""
        self.send_times: collections.deque[tuple[float, int]] | None = None  # bench hook

    def set_handler(self, handler: FrameHandler) -> None:
        self._handler = handler

    # -- sending -------------------------------------------------------------------------------

    def send(self, frame: CanFrame) -> bool:
        """Queue a frame. False (and counted as dropped) when the bus is not open or full."""
        if self.state is not BusState.OPEN or len(self._tx) >= self._send_queue_size:
            self.counters.dropped += 1
            return False
        self._tx.append(frame)
        self._wake.set()
        return True

    def count_rejected(self, kind: str) -> None:
        """For handlers that report bad frames as events rather than exceptions."""
        if kind == "unknown":
            self.counters.unknown += 1
        else:
            self.counters.malformed += 1

    # -- task ----------------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                self.state = BusState.OPENING
                try:
                    bus = await _open_bus(self.config)
                except (can.CanError, OSError, ValueError, ImportError) as exc:
                    failures += 1
                    await self._after_failure(exc, failures, "open failed")
                    continue
                failures = 0
                try:
                    await self._serve(bus)
                except BusFailure as exc:
                    failures += 1
                    self.counters.reopens += 1
                    await self._after_failure(exc.__cause__ or exc, failures, "bus failed")
        finally:
            self.state = BusState.STOPPED

    async def _after_failure(self, exc: BaseException, failures: int, what: str) -> None:
        self.counters.errors += 1
        self.last_error = f"{what}: {exc}"
        self.state = BusState.BACKOFF
        self.opened.clear()
        if self._alarms is not None:
            self._alarms.raise_alarm(ALARM_BUS_ERROR, self.name, self.last_error)
        delay = self._backoff.delay(failures)
        # First failure loud, repeats quiet (a missing adapter would flood the log).
        level = logging.WARNING if failures == 1 else logging.DEBUG
        log.log(level, "CAN %s %s (%s); reopening in %.1f s", self.name, what, exc, delay)
        await self._clock.sleep(delay)

    async def _serve(self, bus: can.BusABC) -> None:
        loop = asyncio.get_running_loop()
        reader = _Reader(self)
        self._failure = None
        self._send_failures = 0
        self._tx.clear()
        notifier = _GuardedNotifier(bus, [reader], timeout=self._notifier_timeout_s, loop=loop)
        threaded = not _has_fileno(bus)
        self.state = BusState.OPEN
        self.opened.set()
        if self._alarms is not None:
            self._alarms.clear_alarm(ALARM_BUS_ERROR, self.name)
        buffer: asyncio.Queue[can.Message] = reader.buffer
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:
                    if self._failure is not None:
                        raise BusFailure(str(self._failure)) from self._failure
                    if self._tx:
                        self._flush(bus)
                    if buffer.empty():
                        break
                    while not buffer.empty():
                        self._receive(buffer.get_nowait())
                        if self._tx:
                            self._flush(bus)
        finally:
            self.state = BusState.BACKOFF
            self.opened.clear()
            if not threaded:
                notifier.stop(0.0)  # removes the fd reader: must run in the loop thread
            # Joining the reader thread (up to one recv timeout) and closing the device can
            # block: both go off the loop.
            await asyncio.shield(asyncio.to_thread(_close, bus, notifier if threaded else None))

    def _flush(self, bus: can.BusABC) -> None:
        times = self.send_times
        while self._tx:
            frame = self._tx.popleft()
            msg = can.Message(
                arbitration_id=frame.arbitration_id,
                data=frame.data,
                is_extended_id=True,
                check=False,
            )
            try:
                bus.send(msg, timeout=0)
            except can.CanError as exc:
                self.counters.dropped += 1
                self._send_failures += 1
                self._log_once("send", f"CAN {self.name} send failed: {exc}")
                if self._send_failures >= self._max_send_failures:
                    self._failure = exc
                    return
                continue
            self._send_failures = 0
            self.counters.tx += 1
            if times is not None:
                times.append((self._clock.monotonic(), frame.arbitration_id))

    def _receive(self, msg: can.Message) -> None:
        self.counters.rx += 1
        if msg.is_error_frame:
            self.counters.errors += 1
            if msg.arbitration_id & CAN_ERR_BUSOFF:
                self._failure = can.CanOperationError("bus-off")
            return
        if not msg.is_extended_id or msg.is_remote_frame or msg.is_fd:
            self.counters.unknown += 1
            return
        handler = self._handler
        if handler is None:
            return
        try:
            handler(CanFrame(msg.arbitration_id, bytes(msg.data)))
        except UnknownFrameError:
            self.counters.unknown += 1
        except MalformedFrameError:
            self.counters.malformed += 1
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the bus
            self.counters.errors += 1
            self._log_once(type(exc).__name__, f"CAN {self.name} handler failed: {exc!r}")

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._wake.set()

    def _log_once(self, key: str, text: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(text)


async def _open_bus(config: CanBusConfig) -> can.BusABC:
    """Open in a worker thread (connecting can block); if we are cancelled meanwhile, the bus
    the thread still returns is closed rather than leaked."""
    fut = asyncio.ensure_future(asyncio.to_thread(can.Bus, **_bus_kwargs(config)))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:

        def _late(f: asyncio.Future[can.BusABC]) -> None:
            if not f.cancelled() and f.exception() is None:
                _close(f.result(), None)

        fut.add_done_callback(_late)
        raise


def _close(bus: can.BusABC, notifier: can.Notifier | None) -> None:
    if notifier is not None:
        notifier.stop(1.0)
    # slcan over socket://: shutdown() skips closing the port when its goodbye fails, and
    # pyserial's close() drops the socket unclosed when shutdown(2) fails on a dead peer.
    port = getattr(bus, "serialPortOrig", None)
    sock = getattr(port, "_socket", None)
    try:
        bus.shutdown()
    except Exception:  # noqa: BLE001 - a dead link fails its goodbye; close what is left
        pass
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()
    if port is not None:
        with contextlib.suppress(Exception):
            port.close()


def _has_fileno(bus: can.BusABC) -> bool:
    try:
        return int(bus.fileno()) >= 0
    except (NotImplementedError, can.CanError, OSError, ValueError):
        return False
