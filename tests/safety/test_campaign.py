"""The CI-sized fault campaign (issue 12): fixed seeds whose schedules together inject every
fault kind once, over the composed station (the daemon a real `swapd run` child: SIGTERM, kill -9
and a full disk are the real thing), with the outside monitor watching. The long campaign is
`bench/fault_campaign.py --runs N`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.safety.harness import KINDS, one_schedule, replay_command

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
