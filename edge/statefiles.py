"""State files the daemon cannot read: one clear error with a way out (issue 12 item 8).

The swap journal and the telemetry outbox are the daemon's only state. When one is corrupt (not
a database, a broken page, a snapshot that does not decode) `swapd run` exits 2 with one line
naming the file and what to do; systemd's `RestartPreventExitStatus=2` keeps it from looping.
"""

from __future__ import annotations

from pathlib import Path


class StateFileError(RuntimeError):
    def __init__(self, path: Path | str, reason: str, what_to_do: str) -> None:
        self.path = Path(path)
        self.reason = reason
        self.what_to_do = what_to_do
        super().__init__(f"{self.path}: {reason}; {what_to_do}")


def journal_advice(config: Path | str | None) -> str:
    cfg = config or "PATH"
    return (
        f"run `swapd journal check --config {cfg}`, then `swapd journal rebuild --config {cfg}"
        " --yes` to start a new journal and rebuild the inventory from the PLC and the slots"
    )


def outbox_advice() -> str:
    return "move the file aside (unsent events in it are lost to the cloud) and start again"
