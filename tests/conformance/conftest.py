"""A child daemon a test could not stop (interrupted by pytest-timeout mid-await, so its async
teardown never ran) is killed here, in a synchronous teardown that always runs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.conformance.rig import LIVE


@pytest.fixture(autouse=True)
def _no_daemon_left() -> Iterator[None]:
    yield
    left = list(LIVE)
    for proc in left:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        LIVE.discard(proc)
    assert not [p.pid for p in left if p.returncode is None], "a daemon outlived its test"
