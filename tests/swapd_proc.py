"""Waiting for a `swapd run` child process to answer on its control socket: shared by the
safety harness and the conformance rig, which spawn the daemon the way systemd does."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

from edge.cli.ctl import request


async def wait_ctl_ready(proc: subprocess.Popen[bytes], sock: Path, timeout_s: float) -> None:
    """Return once `status` answers on `sock`. Raises RuntimeError if the process exits first
    and TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"swapd exited at start ({proc.returncode})")
            if sock.exists():
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(request, str(sock), "status", {}, 2.0)
                    return
            await asyncio.sleep(0.1)
