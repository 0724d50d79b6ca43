"""Issue 12 item 3: after a crash, the journal's positions are confirmed from the PLC's own
registers at start-up, never trusted. The pure sequence against the simulated PLC on a
ManualClock; verdicts from the PLC simulator (its commands, its motions, where its packs are)."""

from __future__ import annotations

from edge.swap.messages import StartSwap
from edge.swap.model import Mode
from edge.swap.sequence import Rejected
from edge.swap.snapshot import restore, take
from tests.edge.swap_fixtures import PACK_TYPE, RACK, SLOTS, CoreRig, slot_views


def started(rig: CoreRig, step: str) -> bool:
    return step in rig.step_events("started")


def done(rig: CoreRig, step: str) -> bool:
    return step in rig.step_events("done")


def restart(rig: CoreRig, snap: dict[str, object]) -> int:
    """The daemon restarts on `snap` (its journal); returns how many motions the PLC made."""
    rig.core = restore(rig.graph, SLOTS, snap)
    rig.apply(rig.core.resume(rig.clock.monotonic()))
    return len(rig.sim.motions)


def test_a_journal_behind_the_plc_holds_the_swap_and_moves_nothing() -> None:
    """The journal restored is older than what the robot did (a rolled-back or replaced state
    file): the PLC acknowledged steps the journal never issued. Trusting the journal would
    resend its steps on packs that have moved; instead the swap is held with the inventory
    alarm and the PLC gets no command."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "lift"), dt=0.1)
    old = take(rig.core)
    rig.run(lambda: done(rig, "fetch_full") and done(rig, "unlock"), dt=0.1)
    n_commands = len(rig.commands)
    motions = restart(rig, old)
    for _ in range(20):
        rig.clock.advance(0.5)
        rig.poll()
    assert len(rig.sim.motions) == motions  # the PLC moved nothing more
    assert len(rig.commands) == n_commands  # nothing was sent to it
    assert ("inventory.inconsistent", "inventory") in rig.alarms
    assert rig.core.mode == Mode.HELD


def test_a_journal_that_matches_the_plc_resumes() -> None:
    """The usual crash: the journal holds the PLC's last acknowledged steps; the swap goes on
    and ends with the inventory matching the PLC's places."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: started(rig, "lift"), dt=0.1)
    restart(rig, take(rig.core))
    rig.run(lambda: rig.has("swap.completed") or rig.has("swap.failed"), dt=0.25)
    assert rig.has("swap.completed")
    assert ("inventory.inconsistent", "inventory") not in rig.alarms
    rig.check_matches_sim()


def test_a_rebuilt_journal_refuses_swaps_while_the_robot_may_hold_a_pack() -> None:
    """`swapd journal rebuild` leaves no journal; the PLC, though, last fetched a pack into its
    buffer. The inventory rebuilt from the slots does not know that pack: no swap may start
    until the operator has corrected it."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: done(rig, "fetch_full"), dt=0.1)
    assert rig.sim.occupancy()["buffer"]  # the PLC's own place: a pack in the buffer
    n_commands = len(rig.commands)
    fresh = CoreRig()  # first boot on the rebuilt (empty) journal, the same PLC
    fresh.sim = rig.sim
    fresh.clock = rig.clock
    fresh.poll()
    assert ("inventory.inconsistent", "inventory") in fresh.alarms
    try:
        fresh.feed(StartSwap("V2", PACK_TYPE, "P-NEW", slot_views(RACK)))
    except Rejected as e:
        assert "inventory" in e.message
    else:
        raise AssertionError("a swap started while the robot may hold a pack")
    assert fresh.commands == [] and len(rig.commands) == n_commands


def test_a_rebuilt_journal_with_the_robot_parked_starts_swaps() -> None:
    """The same after a completed swap: the PLC's last steps leave no pack on the robot."""
    rig = CoreRig()
    rig.vehicle.arrive()
    rig.start()
    rig.run(lambda: rig.has("swap.completed"), dt=0.25)
    fresh = CoreRig()
    fresh.sim = rig.sim
    fresh.clock = rig.clock
    fresh.poll()
    assert ("inventory.inconsistent", "inventory") not in fresh.alarms
