"""asyncio helpers the rooms share."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """End the current task if a cancellation was requested and swallowed below it.

    Python 3.11's `asyncio.wait_for` (used inside aiomqtt and pymodbus) can return a result
    though its task was cancelled at the same moment; the loop around it then went on waiting
    and a stopping daemon never ended (seen under load in the fault campaign). Loops that call
    such libraries check this once per turn.

    Not for a task that ran a TaskGroup itself: when a child fails while the group is already
    waiting for its children, Python 3.11 cancels the parent task and never uncancels it, so
    `cancelling()` stays raised there though nobody cancelled it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
