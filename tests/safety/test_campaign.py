"""The CI-sized fault campaign (issue 12): fixed seeds whose schedules together inject every
fault kind once, over the composed station (the daemon a real `swapd run` child: SIGTERM, kill -9
and a full disk are the real thing), with the outside monitor watching. The long campaign is
`bench/fault_campaign.py --runs N`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fault_campaign import Overran, within
from tests.conftest import Broker
from tests.safety.harness import KINDS, cancel_all, one_schedule, replay_command

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

# Every kind once, split into groups that each fit one short schedule.
GROUPS: dict[int, tuple[tuple[str, str], ...]] = {
    101: tuple(k for k in KINDS if k[0] == "charger") + (("daemon", "kill"),),
    102: tuple(k for k in KINDS if k[0] == "pack"),
    103: tuple(k for k in KINDS if k[0] == "plc")
    + (("daemon", "sigterm"), ("daemon", "full_disk")),
}


def test_the_ci_seeds_cover_every_fault_kind() -> None:
    covered = {k for kinds in GROUPS.values() for k in kinds}
    assert covered == set(KINDS)


@pytest.mark.parametrize("seed", sorted(GROUPS))
async def test_campaign_seed_has_no_invariant_violation(
    seed: int, mosquitto: Broker, tmp_path: Path
) -> None:
    sched, out = await one_schedule(
        tmp_path,
        seed,
        process=True,
        length_s=40.0,
        broker=(mosquitto.host, mosquitto.port),
        kinds=GROUPS[seed],
        each_once=True,
    )
    report = "\n".join([*(f"fault {f}" for f in out.injected), *out.notes, *out.not_recovered])
    assert not out.violations, (
        f"seed {seed}: {out.violations}\n{report}\nreplay: {replay_command(seed, True)}"
    )
    assert not out.not_recovered, report
    assert len(out.injected) >= len(GROUPS[seed]) - 2, (
        report
    )  # a pack fault may find its slot empty


def test_the_bench_runs_a_small_parallel_campaign() -> None:
    """`bench/fault_campaign.py` as the bench runs it, small: five schedules at once, each its
    own worker process, station (a real `swapd run`), broker and ports."""
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "bench" / "fault_campaign.py")]
    cmd += ["--runs", "5", "--jobs", "5", "--length", "15", "--seed", "201"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=140, cwd=root)
    total = re.search(
        r"^(\d+) schedules, (\d+) faults injected, (\d+) invariant violations, (\d+) recoveries",
        done.stdout,
        re.MULTILINE,
    )
    assert total is not None, done.stdout + done.stderr
    runs, faults, violations, recoveries = map(int, total.groups())
    assert (runs, violations) == (5, 0), done.stdout
    assert faults >= 10 and recoveries >= 1, done.stdout
    assert done.returncode == 0, done.stdout


async def _swallows_cancels(times: int) -> None:
    """Swallows its first `times` cancels, as 3.11's `wait_for` in aiomqtt can, then waits."""
    for _ in range(times):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    await asyncio.Event().wait()


@pytest.mark.timeout(20)
async def test_the_teardown_ends_a_task_that_swallowed_its_cancel() -> None:
    task = asyncio.create_task(_swallows_cancels(1))
    await asyncio.sleep(0)
    await cancel_all([task], within_s=5.0)
    assert task.cancelled()


@pytest.mark.timeout(20)
async def test_a_schedule_past_its_deadline_is_a_harness_error_with_stacks() -> None:
    assert await within(5.0, asyncio.sleep(0.01, result="done")) == "done"

    async def hung_teardown() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Overran) as caught:
        await within(0.2, hung_teardown(), grace_s=5.0)
    assert not caught.value.stuck and "ended by its cancel" in str(caught.value)
    assert "in hung_teardown" in str(caught.value)  # the stack of where it hung

    with pytest.raises(Overran) as caught:
        await within(0.2, _swallows_cancels(2), grace_s=0.3)
    assert caught.value.stuck and "still running" in str(caught.value)
    assert "in _swallows_cancels" in str(caught.value)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await cancel_all(left, within_s=5.0)  # the worker's killpg does this in the campaign


def test_the_bench_reports_an_overrun_schedule_and_goes_on() -> None:
    """A schedule past `--length` + `--overrun` is cancelled and printed as a harness error with
    its worker's task stacks; the next seed still runs."""
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "bench" / "fault_campaign.py")]
    cmd += ["--runs", "2", "--length", "10", "--overrun", "0", "--seed", "201"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=140, cwd=root)
    errors = re.findall(r"^seed (\d+): HARNESS ERROR schedule overran", done.stdout, re.MULTILINE)
    assert errors == ["201", "202"], done.stdout + done.stderr
    assert "asyncio tasks:" in done.stdout and "ended by its cancel" in done.stdout, done.stdout
    assert "harness errors (no verdict) for seeds [201, 202]" in done.stdout
    assert done.returncode == 1
