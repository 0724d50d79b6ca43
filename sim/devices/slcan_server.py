"""SLCAN (Lawicel ASCII) over TCP: one port per CAN bus, so simulated packs can run in another
process than the daemon. python-can connects with
`can.Bus(interface="slcan", channel="socket://127.0.0.1:PORT", sleep_after_open=0)`.

Protocol subset (what python-can's slcan interface and common tools send):
`O` open, `L` listen-only open, `C` close, `Sn` bitrate, `sXXYY` BTR, `V`/`v` version, `N` serial,
`F` status flags, `Z0/1` timestamps, `Tiiiiiiiildd..` / `tiiildd..` data frames, `R`/`r` remote.
Commands are acknowledged with CR, errors with BEL. Received frames are not acknowledged with
`z`: python-can ignores acks and reads the socket one byte at a time, so every saved byte counts.

`SlcanPort` is a frame transport (`send`, `set_handler`, `run`) like drivers.can.bus.BusOwner,
so a SimPack runs on either. `python -m sim.devices.slcan_server --count N` serves N simulated
packs (one port each) and prints `READY <port> <port> ...` once listening; with
`--control-stdin` it reads fault commands `<pack index> <fault> [clear]` (sim.devices.pack.Fault).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from drivers.can.codec import CanFrame
from drivers.core.log import get_logger

log = get_logger("sim.slcan")

OK = b"\r"
ERROR = b"\a"
MAX_WRITE_BUFFER = 256 * 1024


class SlcanPort:
    """One TCP listening port = one CAN bus. A new client replaces the previous one."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        handler: Callable[[CanFrame], None] | None = None,
        name: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.name = name or f"slcan:{port}"
        self._handler = handler
        self._writer: asyncio.StreamWriter | None = None
        self._open = False
        self.listening = asyncio.Event()
        self.connected = asyncio.Event()
        self.rx = 0
        self.tx = 0
        self.dropped = 0
        self.bad_lines = 0
        self.connections = 0

    def set_handler(self, handler: Callable[[CanFrame], None]) -> None:
        self._handler = handler

    @property
    def opened(self) -> asyncio.Event:
        """Set while a client is connected (same name as BusOwner.opened)."""
        return self.connected

    def send(self, frame: CanFrame) -> bool:
        """Frame from the simulated node to the client. False (dropped) if nobody listens."""
        w = self._writer
        if w is None or not self._open or w.is_closing():
            self.dropped += 1
            return False
        if w.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.dropped += 1
            return False
        w.write(
            b"T%08X%d%s\r"
            % (frame.arbitration_id, len(frame.data), frame.data.hex().upper().encode())
        )
        self.tx += 1
        return True

    async def run(self) -> None:
        server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        self.listening.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            self.listening.clear()
            if self._writer is not None:
                self._writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        old = self._writer
        if old is not None:
            old.close()
        self._writer = writer
        self._open = False
        self.connections += 1
        self.connected.set()
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\r")
                except asyncio.LimitOverrunError:
                    await reader.read(65536)  # drop an endless line
                    self.bad_lines += 1
                    continue
                reply = self._command(line[:-1])
                if reply:
                    writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self._open = False
                self.connected.clear()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _command(self, line: bytes) -> bytes:
        if not line:
            return OK  # empty command (python-can sends one for "no data bitrate")
        c = line[:1]
        if c in (b"T", b"t", b"R", b"r"):
            if not self._open:
                return ERROR
            frame = self._parse_frame(line)
            if frame is None:
                self.bad_lines += 1
                return ERROR
            self.rx += 1
            if self._handler is not None and c == b"T":
                try:
                    self._handler(frame)
                except Exception as exc:  # noqa: BLE001 - the simulated node must survive
                    log.warning("SLCAN handler failed", name=self.name, error=repr(exc))
            return b""
        if c in (b"O", b"L"):
            self._open = True
            return OK
        if c == b"C":
            self._open = False
            return OK
        if c in (b"S", b"s", b"Z", b"M", b"m", b"X", b"W", b"Q"):
            return OK
        if c == b"V":
            return b"V1013\r"
        if c == b"v":
            return b"vSTM32\r"
        if c == b"N":
            return b"NSIM1\r"
        if c == b"F":
            return b"F00\r"
        self.bad_lines += 1
        return ERROR

    @staticmethod
    def _parse_frame(line: bytes) -> CanFrame | None:
        try:
            if line[:1] in (b"T", b"R"):
                can_id = int(line[1:9], 16)
                dlc = int(line[9:10])
                data = bytes.fromhex(line[10 : 10 + 2 * dlc].decode()) if line[:1] == b"T" else b""
            else:
                can_id = int(line[1:4], 16)
                dlc = int(line[4:5])
                data = bytes.fromhex(line[5 : 5 + 2 * dlc].decode()) if line[:1] == b"t" else b""
        except ValueError:
            return None
        if dlc > 8 or (line[:1] in (b"T", b"t") and len(data) != dlc):
            return None
        return CanFrame(can_id, data)


async def serve_packs(
    count: int,
    base_port: int = 0,
    soc_pct: float = 30.0,
    speed: float = 1.0,
    chemistry: str = "LFP",
    ready: Callable[[list[int]], None] | None = None,
    control: asyncio.StreamReader | None = None,
) -> None:
    """Run `count` simulated packs, one SLCAN port each (consecutive ports, or ephemeral)."""
    from sim.devices.pack import BmsCore, PackModel, PackSpec, SimPack

    packs = []
    for i in range(count):
        spec = PackSpec(chemistry=chemistry, soc_pct=soc_pct, serial=1000 + i)
        core = BmsCore(PackModel(spec, speed=speed))
        port = SlcanPort(base_port + i if base_port else 0, name=f"pack{i}")
        packs.append(SimPack(f"pack{i}", core, port))
    async with asyncio.TaskGroup() as tg:
        for p in packs:
            tg.create_task(p.run(), name=f"sim-pack-{p.name}")
        ports = []
        for p in packs:
            assert isinstance(p.transport, SlcanPort)
            await p.transport.listening.wait()
            ports.append(p.transport.port)
        if ready is not None:
            ready(ports)
        if control is not None:
            tg.create_task(_control(control, packs), name="sim-pack-control")


async def _control(lines: asyncio.StreamReader, packs: list[Any]) -> None:
    """Fault injection from another process: lines `<pack index> <fault> [clear]`."""
    from sim.devices.pack import Fault

    while line := await lines.readline():
        parts = line.decode().split()
        try:
            pack = packs[int(parts[0])]
            fault = Fault(parts[1])
        except (IndexError, ValueError) as exc:
            print(f"ERROR {exc}", flush=True)
            continue
        if len(parts) > 2 and parts[2] == "clear":
            pack.clear(fault)
        else:
            pack.inject(fault)
        print(f"OK {parts[0]} {fault.value}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Simulated GB/T 27930 packs over SLCAN/TCP")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--base-port", type=int, default=0, help="0: ephemeral ports")
    ap.add_argument("--soc", type=float, default=30.0)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--chemistry", choices=["LFP", "NMC"], default="LFP")
    ap.add_argument(
        "--control-stdin",
        action="store_true",
        help="read fault commands from stdin: `<pack index> <fault> [clear]`",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def ready(ports: list[int]) -> None:
        print("READY " + " ".join(str(p) for p in ports), flush=True)

    async def run() -> None:
        control = None
        if args.control_stdin:
            loop = asyncio.get_running_loop()
            control = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), sys.stdin)
        await serve_packs(
            args.count, args.base_port, args.soc, args.speed, args.chemistry, ready, control
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
