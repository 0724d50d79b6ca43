"""pyserial URL handler `swapsock://host:port`: pyserial's `socket://` with a receive buffer.

python-can's slcan interface reads one byte per `read(1)` and asks `in_waiting` between bytes.
pyserial's socket handler answers each with a select() and a recv(1), and reports at most one
byte waiting, so on the event loop every received byte costs a syscall pair and a loop
callback (27 per GB/T frame). Here `in_waiting` drains the socket into a buffer and `read`
serves from it, so one readable event yields whole frames. `close()` also skips pyserial's
0.3 s sleep and always closes the socket; TCP_NODELAY is set (one small write per frame). The bus owner maps `slcan` + `socket://` channels
to this scheme; config files keep saying `socket://`.
"""

from __future__ import annotations

import socket
from typing import Any

from serial.serialutil import PortNotOpenError, SerialException
from serial.urlhandler.protocol_socket import Serial as _SocketSerial


class BufferedSocketSerial(_SocketSerial):  # type: ignore[misc]
    _socket: socket.socket | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rxbuf = bytearray()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        super().open()
        # One SLCAN line per CAN frame: Nagle would hold a frame back for the peer's ACK.
        if self._socket is not None:
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _fill(self) -> None:
        sock: socket.socket | None = self._socket
        if sock is None:
            raise PortNotOpenError()
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                raise SerialException(f"read failed: {exc}") from exc
            if not data:
                raise SerialException("socket disconnected")
            self._rxbuf += data
            if len(data) < 65536:
                return

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        if not self._rxbuf:
            self._fill()
        return len(self._rxbuf)

    @property
    def buffered(self) -> int:
        """Bytes already received and not yet read (no syscall)."""
        return len(self._rxbuf)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        if len(self._rxbuf) < size:
            self._fill()
        if len(self._rxbuf) < size and self._timeout != 0:
            more = super().read(size - len(self._rxbuf))
            self._rxbuf += more
        out = bytes(self._rxbuf[:size])
        del self._rxbuf[:size]
        return out

    def reset_input_buffer(self) -> None:
        self._rxbuf.clear()
        super().reset_input_buffer()

    def close(self) -> None:
        sock: socket.socket | None = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self._socket = None
        self.is_open = False


def serial_class_for_url(url: str) -> tuple[str, type[BufferedSocketSerial]]:
    return "socket://" + url.split("://", 1)[1], BufferedSocketSerial
