"""The swap sequence: a sans-I/O core that runs the step graph.

`handle(event, now)` and `tick(now)` return actions; `now` is monotonic seconds. The caller
executes the actions in order, except that all `JournalWrite`s of one call are committed first,
together with the snapshot (`edge.swap.snapshot`): so an intent is on disk before the command it causes.

Motion is never commanded twice: every command carries a per-unit sequence counter journalled
with its intent; the PLC ignores a seq equal to the one it acknowledged. A command whose seq the
PLC has not acknowledged is resent with the same seq (after a restart, or if the PLC ignored it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from drivers.core.alarm_sink import ClearAlarm, RaiseAlarm
from drivers.robot.contract import UNITS, RobotStatus, UnitState
from edge.alarms import AlarmCode
from edge.swap.choice import NoPackError, choose_pack, choose_store_slot
from edge.swap.inventory import (
    Handling,
    Inventory,
    InventoryError,
    Place,
    SlotPlace,
)
from edge.swap.journal import JournalRecord, RecordKind
from edge.swap.messages import (
    Action,
    CommandStep,
    CorrectInventory,
    Emit,
    Event,
    JournalWrite,
    Manual,
    PackDocked,
    PackIdentity,
    PackRemoved,
    PackSeated,
    PlcOffline,
    PlcStatus,
    RefitOriginal,
    Rejected,
    RequestAllOutputsOff,
    RequestOutputOff,
    ResetFault,
    RetryStep,
    SetHalt,
    SlotOutputFailed,
    SlotOutputOff,
    StartSwap,
)
from edge.swap.model import (
    FaultReason,
    Hold,
    Mode,
    Move,
    ShuttleAt,
    StepRun,
    StepStatus,
    Swap,
    SwapKind,
)
from edge.swap.operator_commands import (
    correct_inventory,
    manual,
    refit_original,
    reset_fault,
    retry_step,
)
from edge.swap.steps import PlaceSymbol, StepDef, StepGraph
from edge.telemetry.models import (
    Details,
    EventType,
    InventoryCorrected,
    MoveRef,
    RecoveryAction,
    StepChange,
    SwapCompleted,
    SwapFailed,
    SwapFault,
    SwapPackMismatch,
    SwapRecovery,
    SwapStarted,
    SwapStep,
)


def _move_refs(run: StepRun) -> list[MoveRef]:
    return [MoveRef(pack_id=p, source=s, to=d) for p, s, d in (m.row() for m in run.moves)]


_ON_ROBOT: tuple[PlaceSymbol, ...] = ("buffer", "shuttle", "stacker")


class SwapSequence:
    def __init__(self, graph: StepGraph, slot_numbers: Mapping[str, int]) -> None:
        self.graph = graph
        self.slot_numbers = dict(slot_numbers)
        self.inventory = Inventory(frozenset(self.slot_numbers))
        self.mode = Mode.IDLE
        self.latched = False
        self.halted: frozenset[str] = frozenset()
        self.seq: dict[str, int] = dict.fromkeys(UNITS, 0)
        # highest seq each unit is known to have acknowledged: an ack below it means the PLC
        # lost its counter (restarted), and resending could repeat a motion
        self.acked: dict[str, int] = dict.fromkeys(UNITS, 0)
        self.shuttle_at = ShuttleAt.VEHICLE
        self.swap_counter = 0
        self.swap: Swap | None = None
        self.awaiting_dock: dict[str, PackIdentity] = {}  # slot -> the pack announced for it
        self.pending_docks: dict[str, PackIdentity] = {}
        self.alarms: set[tuple[str, str]] = set()
        self.plc: RobotStatus | None = None
        self.plc_online = False
        self.plc_at: float | None = None  # when the status in `plc` was read (fresh heartbeat)
        self.plc_stale = False
        self._hb: int | None = None
        self._hb_at = 0.0
        self._check_heartbeat = "heartbeat" in graph.contract.model.points
        self._last_halt_write = -math.inf
        self._positions_confirmed = False  # per process: the first status after a start
        # (swap id, step id, seq) of steps active at a restart whose command may never have
        # reached the PLC: resending one starts it, so its slot's off is confirmed afresh first
        self._reconfirm: set[tuple[str, str, int]] = set()
        # per unit, the PLC steps that leave a pack on the robot (buffer, shuttle, stacker)
        self._to_robot = {
            u: {
                st.plc_step
                for st in graph.model.steps
                if st.unit == u and any(m.to in _ON_ROBOT for m in st.moves)
            }
            for u in UNITS
        }

    # ----- entry points

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        match event:
            case PlcStatus(status=st):
                self._on_status(st, now, out)
            case PlcOffline(reason=r):
                self._on_offline(r, out)
            case StartSwap():
                self._start(event, now, out)
            case SlotOutputOff(slot_id=s):
                sw = self.swap
                if sw is not None:
                    sw.off_requested.discard(s)
                if (
                    sw is not None
                    and s in (sw.full_slot, sw.store_slot)
                    and s not in sw.outputs_off
                ):
                    sw.outputs_off.add(s)
                    self._journal(out, RecordKind.OUTPUT_OFF_CONFIRMED, slot=s)
            case SlotOutputFailed(slot_id=s, reason=r):
                sw = self.swap
                if sw is not None:
                    sw.off_requested.discard(s)
                if sw is not None and s in (sw.full_slot, sw.store_slot):
                    # no pack may leave or enter that slot: hold; retry_step asks again
                    self._hold(out, FaultReason.OUTPUT_OFF_FAILED, "", f"slot {s}: {r}")
            case PackDocked(slot_id=s, identity=ident):
                self._on_docked(s, ident, out)
            case ResetFault():
                reset_fault(self, out)
            case RetryStep():
                retry_step(self, now, out)
            case RefitOriginal():
                refit_original(self, now, out)
            case Manual(end=end):
                manual(self, end, now, out)
            case CorrectInventory():
                correct_inventory(self, event, out)
        self._advance(now, out)
        self._clock(now)
        return out

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        sw = self.swap
        if (
            sw is not None
            and self.status_stale(now)
            and self.plc_at is not None
            and any(sw.runs[s].status == StepStatus.ACTIVE for s in sw.plan)
        ):
            age = now - self.plc_at
            self._on_stale(f"status {age:.1f} s old during a step", out)
        if sw is not None and self.plc_online:
            for sid in sw.plan:
                run = sw.runs[sid]
                st = self._def(sid)
                if run.status == StepStatus.ACTIVE and now - run.started_at > st.timeout_s:
                    self._fail(
                        sid,
                        FaultReason.STEP_TIMEOUT,
                        f"{sid} exceeded {st.timeout_s:g} s",
                        AlarmCode.ROBOT_STEP_TIMEOUT,
                        out,
                        halt=True,
                    )
        self._advance(now, out)
        self._clock(now)
        return out

    def resume(self, now: float) -> list[Action]:
        """After a restart from a snapshot: re-assert halts, alarms and the e-stop latch."""
        out: list[Action] = []
        for code, source in sorted(self.alarms):
            out.append(RaiseAlarm(code, source, "restored after restart"))
        out.append(SetHalt(self.halted))
        if self.latched:
            out.append(RequestAllOutputsOff())
        if self.swap is not None:
            # The journalled confirmations are not trusted: both slots are confirmed afresh.
            self.swap.outputs_off.clear()
            for slot in (self.swap.full_slot, self.swap.store_slot):
                self._request_off(slot, out)
            self.swap.started_at = now - self.swap.elapsed_s
            for sid, run in self.swap.runs.items():
                run.started_at = now  # timeouts restart with the process
                run.last_sent = -math.inf  # resend at once if the PLC has not acknowledged
                if run.status == StepStatus.ACTIVE and any(
                    r.startswith("output_off:") for r in self._def(sid).requires
                ):
                    self._reconfirm.add((self.swap.swap_id, sid, run.seq))
        self._journal(out, RecordKind.RESTARTED, mode=self.mode.value, latched=self.latched)
        self._emit(
            out,
            EventType.SWAP_RECOVERY,
            SwapRecovery(
                swap_id=self._swap_id(),
                action=RecoveryAction.RESTART,
                mode=self.mode,
                latched=self.latched,
            ),
        )
        return out

    def _clock(self, now: float) -> None:
        """The swap's running time goes into every snapshot (so it survives a restart)."""
        if self.swap is not None:
            self.swap.elapsed_s = round(now - self.swap.started_at, 3)

    def reserved_slots(self) -> frozenset[str]:
        """Slots a swap is using: their chargers must keep the output off (slot controllers
        must not start charging there) until the swap ends."""
        sw = self.swap
        return frozenset() if sw is None else frozenset({sw.full_slot, sw.store_slot})

    # ----- internals: helpers

    def _def(self, sid: str) -> StepDef:
        return self.graph.step(sid)

    def _journal(self, out: list[Action], kind: RecordKind, **data: Any) -> None:
        if self.swap is not None and "swap_id" not in data:
            data["swap_id"] = self.swap.swap_id
        out.append(JournalWrite(JournalRecord(kind, data)))

    def _swap_id(self) -> str | None:
        return None if self.swap is None else self.swap.swap_id

    def _emit(self, out: list[Action], type_: EventType, details: Details) -> None:
        out.append(Emit(type_, details))

    def _raise(self, out: list[Action], code: str, source: str, detail: str) -> None:
        self.alarms.add((code, source))
        out.append(RaiseAlarm(code, source, detail))

    def _clear(self, out: list[Action], code: str, source: str) -> None:
        if (code, source) in self.alarms:
            self.alarms.discard((code, source))
            out.append(ClearAlarm(code, source))

    def _set_halt(self, units: frozenset[str], out: list[Action]) -> None:
        self.halted = units
        out.append(SetHalt(units))

    def _place(self, sym: PlaceSymbol) -> Place | None:
        """The place a step graph's symbol stands for in this swap (None: away)."""
        sw = self.swap
        assert sw is not None
        if sym == "full_slot":
            return SlotPlace(sw.full_slot)
        if sym == "store_slot":
            return SlotPlace(sw.store_slot)
        if sym == "away":
            return None
        return Handling(sym)

    def _lock_ok(self) -> bool:
        st = self.plc
        if st is None:
            return False
        good = st.lock_engaged & st.lock_torque_ok
        return bin(good).count("1") >= self.graph.model.locking_rule.min_heads_ok

    def _missing(self, st: StepDef) -> list[str]:
        sw = self.swap
        plc = self.plc
        assert sw is not None and plc is not None
        miss: list[str] = [i for i in st.interlocks if not plc.inputs.get(i, False)]
        for r in st.requires:
            slot = {"output_off:full_slot": sw.full_slot, "output_off:store_slot": sw.store_slot}
            if r in slot and slot[r] not in sw.outputs_off:
                miss.append(r)
            elif r == "pack_locked_or_clear":
                clear = self.inventory.at(Handling.VEHICLE) is None and plc.lock_engaged == 0
                if not (self._lock_ok() or clear):
                    miss.append(r)
        return miss

    def _hold(self, out: list[Action], reason: str, step: str, detail: str) -> None:
        sw = self.swap
        if sw is None:
            return
        if self.mode == Mode.RUNNING:
            self.mode = Mode.HELD
        sw.hold = Hold(reason, step, detail)
        if step:
            sw.fault_step = step
        packs = [sw.announced_pack_id, sw.full_pack_id]
        self._journal(out, RecordKind.HELD, reason=reason, step=step, detail=detail)
        self._emit(
            out,
            EventType.SWAP_FAULT,
            SwapFault(
                swap_id=sw.swap_id,
                reason=reason,
                step=step or None,
                detail=detail,
                pack_ids=packs,
                mode=self.mode,
            ),
        )

    def _fail(
        self,
        sid: str,
        reason: str,
        detail: str,
        alarm: str,
        out: list[Action],
        *,
        halt: bool,
    ) -> None:
        sw = self.swap
        assert sw is not None
        run = sw.runs[sid]
        st = self._def(sid)
        run.status = StepStatus.FAILED
        run.reason = reason
        if halt and st.unit not in self.halted:
            self._set_halt(self.halted | {st.unit}, out)
        self._raise(out, alarm, f"robot.{st.unit}", f"{sid}: {detail}")
        self._journal(
            out, RecordKind.STEP_FAILED, step=sid, seq=run.seq, reason=reason, detail=detail
        )
        self._emit(
            out,
            EventType.SWAP_STEP,
            SwapStep(
                swap_id=sw.swap_id,
                step=sid,
                unit=st.unit,
                state=StepChange.FAILED,
                seq=run.seq,
                reason=reason,
                detail=detail,
                moves=_move_refs(run),
            ),
        )
        self._hold(out, reason, sid, detail)

    def _inconsistent(self, out: list[Action], detail: str, step: str = "") -> None:
        self._raise(out, AlarmCode.INVENTORY_INCONSISTENT, "inventory", detail)
        self._journal(out, RecordKind.INVENTORY_INCONSISTENT, detail=detail)
        if self.swap is not None:
            self._hold(out, FaultReason.INVENTORY_INCONSISTENT, step, detail)
        else:
            self._emit(
                out,
                EventType.SWAP_FAULT,
                SwapFault(reason=FaultReason.INVENTORY_INCONSISTENT, detail=detail),
            )

    # ----- internals: PLC

    def _on_offline(self, reason: str, out: list[Action]) -> None:
        if not self.plc_online and (AlarmCode.ROBOT_PLC_OFFLINE, "robot") in self.alarms:
            return
        self.plc_online = False
        self._raise(out, AlarmCode.ROBOT_PLC_OFFLINE, "robot", reason)
        if self.swap is not None and self.mode == Mode.RUNNING:
            self._hold(out, FaultReason.PLC_OFFLINE, "", reason)

    def heartbeat_frozen(self, st: RobotStatus, now: float) -> bool:
        """Seam (issue 12 item 2): the PLC's heartbeat must advance. True when it has not
        changed for longer than the step graph's heartbeat timeout (a frozen PLC image)."""
        if not self._check_heartbeat:
            return False
        if st.heartbeat != self._hb:
            self._hb, self._hb_at = st.heartbeat, now
            return False
        return now - self._hb_at > self.graph.model.heartbeat_timeout_s

    def plc_disagrees(self, st: RobotStatus) -> list[str]:
        """Seam (issue 12 item 3): at start-up the journal's positions are confirmed from the
        PLC's own registers, never trusted. Each unit's acknowledged step must be the one the
        journal commanded with that seq; a seq the journal never issued means the robot moved
        without it (journal rebuilt, replaced or rolled back): with a swap in flight nothing it
        says about the packs holds, and with none the robot must not be busy or hold a pack."""
        found: list[str] = []
        sw = self.swap
        for u in UNITS:
            us = st.units[u]
            name = self.graph.contract.step_name(u, us.step_code)
            said = next(
                (
                    self._def(sid).plc_step
                    for sid in (sw.plan if sw is not None else ())
                    if sw is not None
                    and sw.runs[sid].seq == us.ack_seq
                    and self._def(sid).unit == u
                ),
                None,
            )
            if us.ack_seq == 0 or (said is None and us.ack_seq <= self.seq[u]):
                continue
            if said is not None:
                if said != name:
                    found.append(f"{u} acknowledged #{us.ack_seq} as {name}, journal: {said}")
            elif sw is not None:
                found.append(
                    f"{u} acknowledged {name} #{us.ack_seq}, journal issued up to #{self.seq[u]}"
                )
            elif us.state == UnitState.BUSY or (
                us.state != UnitState.IDLE and name in self._to_robot[u]
            ):
                found.append(
                    f"{u} {us.state.value} after {name} #{us.ack_seq}, unknown to the journal: "
                    "the robot may hold a pack"
                )
        return found

    def status_stale(self, now: float) -> bool:
        """Seam (issue 12 item 2): the last good status is older than the freshness limit."""
        return self.plc_at is None or now - self.plc_at > self.graph.model.status_max_age_s

    def _on_stale(self, reason: str, out: list[Action]) -> None:
        """A frozen or too-old PLC status: nothing it says can be trusted. Halt both units,
        alarm, hold the swap (its running steps count as failed; retry-step resumes)."""
        if self.plc_stale:
            return
        self.plc_stale = True
        self._raise(out, AlarmCode.ROBOT_PLC_STALE, "robot", reason)
        self._set_halt(frozenset(UNITS), out)
        sw = self.swap
        if sw is not None:
            for sid in sw.plan:
                if sw.runs[sid].status == StepStatus.ACTIVE:
                    sw.runs[sid].status = StepStatus.FAILED
                    sw.runs[sid].reason = FaultReason.PLC_STALE
            self._hold(out, FaultReason.PLC_STALE, "", reason)

    def _on_status(self, st: RobotStatus, now: float, out: list[Action]) -> None:
        if self.heartbeat_frozen(st, now):
            self._on_stale(f"heartbeat {st.heartbeat} frozen", out)
            return  # a frozen image is not used, whatever it says
        self.plc_at = now
        if self.plc_stale:
            self.plc_stale = False
            self._clear(out, AlarmCode.ROBOT_PLC_STALE, "robot")
            if self.swap is None and not self.latched:
                self._set_halt(frozenset(), out)
        self.plc = st
        if not self.plc_online:
            self.plc_online = True
            self._clear(out, AlarmCode.ROBOT_PLC_OFFLINE, "robot")
        if not self._positions_confirmed:
            self._positions_confirmed = True
            found = self.plc_disagrees(st)
            if found:  # held (or swaps refused) until the operator corrects the inventory
                self._inconsistent(out, "PLC disagrees with the journal: " + "; ".join(found))
        plc_reset = set()
        for u in UNITS:
            ack = st.units[u].ack_seq
            if ack > self.seq[u] and not self._unit_active(u):
                self.seq[u] = ack
            if 0 < self.acked[u] - ack < 0x8000:
                plc_reset.add(u)
            elif ack <= self.seq[u] or self.acked[u] - ack >= 0x8000:
                self.acked[u] = ack
        if plc_reset and (AlarmCode.ROBOT_PLC_RESTARTED, "robot") not in self.alarms:
            detail = ", ".join(
                f"{u} acknowledges {st.units[u].ack_seq}, had {self.acked[u]}"
                for u in sorted(plc_reset)
            )
            self._raise(out, AlarmCode.ROBOT_PLC_RESTARTED, "robot", detail)
            self._journal(out, RecordKind.PLC_RESTARTED, detail=detail)
            if self.swap is not None:
                for sid in self.swap.plan:
                    run = self.swap.runs[sid]
                    if run.status == StepStatus.ACTIVE and self._def(sid).unit in plc_reset:
                        run.status = StepStatus.FAILED
                        run.reason = FaultReason.PLC_RESTARTED
                self._hold(out, FaultReason.PLC_RESTARTED, "", detail)
            else:
                self._emit(
                    out,
                    EventType.SWAP_FAULT,
                    SwapFault(reason=FaultReason.PLC_RESTARTED, detail=detail),
                )
        if not st.inputs.get("estop_chain_healthy", False) and not self.latched:
            self._latch(out)
        if (
            st.halted != self.halted
            and now - self._last_halt_write >= self.graph.model.command_resend_s
        ):
            self._last_halt_write = now
            out.append(SetHalt(self.halted))
        sw = self.swap
        if sw is None:
            return
        for sid in list(sw.plan):
            run = sw.runs[sid]
            if run.status not in (StepStatus.ACTIVE, StepStatus.FAILED) or run.seq == 0:
                continue
            sdef = self._def(sid)
            us = st.units[sdef.unit]
            if us.ack_seq == run.seq and us.state == UnitState.DONE:
                self._done(sid, out)
                continue
            if run.status != StepStatus.ACTIVE:
                continue
            lost = [i for i in sdef.interlocks if not st.inputs.get(i, False)]
            if lost:
                self._fail(
                    sid,
                    FaultReason.INTERLOCK_LOST,
                    ",".join(lost),
                    AlarmCode.ROBOT_INTERLOCK_LOST,
                    out,
                    halt=True,
                )
                continue
            if us.ack_seq == run.seq and us.state == UnitState.FAULT:
                name = self.graph.contract.fault_name(us.fault_code)
                halted_by_us = sdef.unit in self.halted
                if not halted_by_us:
                    self._fail(
                        sid,
                        FaultReason.PLC_FAULT,
                        name,
                        AlarmCode.ROBOT_STEP_FAULT,
                        out,
                        halt=False,
                    )
                else:
                    run.status = StepStatus.FAILED
                    run.reason = name
                continue
            if (
                us.ack_seq != run.seq
                and self.mode == Mode.RUNNING
                and not self.latched
                and sdef.unit not in self.halted
                and now - run.last_sent >= self.graph.model.command_resend_s
            ):
                if not self.resend_confirmed(sw, sid, run):
                    continue
                run.last_sent = now
                out.append(
                    CommandStep(sdef.unit, self.graph.plc_code(sdef), self._arg(sdef), run.seq, sid)
                )

    def _unit_active(self, unit: str) -> bool:
        sw = self.swap
        return sw is not None and any(
            sw.runs[s].status == StepStatus.ACTIVE and self._def(s).unit == unit for s in sw.plan
        )

    def _arg(self, st: StepDef) -> int:
        sw = self.swap
        assert sw is not None
        if st.arg == "full_slot":
            return self.slot_numbers[sw.full_slot]
        if st.arg == "store_slot":
            return self.slot_numbers[sw.store_slot]
        return 0

    def _latch(self, out: list[Action]) -> None:
        self.latched = True
        self._set_halt(frozenset(UNITS), out)
        out.append(RequestAllOutputsOff())
        self._raise(out, AlarmCode.SAFETY_EMERGENCY_STOP, "robot", "emergency-stop chain open")
        self._journal(out, RecordKind.LATCHED, reason=FaultReason.EMERGENCY_STOP)
        sw = self.swap
        if sw is not None:
            for sid in sw.plan:
                if sw.runs[sid].status == StepStatus.ACTIVE:
                    sw.runs[sid].status = StepStatus.FAILED
                    sw.runs[sid].reason = FaultReason.EMERGENCY_STOP
            self._hold(out, FaultReason.EMERGENCY_STOP, "", "emergency-stop chain open")
        else:
            self._emit(
                out,
                EventType.SWAP_FAULT,
                SwapFault(reason=FaultReason.EMERGENCY_STOP, detail="emergency-stop chain open"),
            )

    # ----- internals: steps

    def _advance(self, now: float, out: list[Action]) -> None:
        sw = self.swap
        if (
            sw is None
            or self.mode != Mode.RUNNING
            or self.latched
            or not self.plc_online
            or self.plc is None
            or self.plc_stale
            or self.status_stale(now)
        ):
            return
        if all(sw.runs[s].status == StepStatus.DONE for s in sw.plan):
            self._finish(out, now, failed=sw.kind != SwapKind.SWAP, reason="original pack refitted")
            return
        busy = {self._def(s).unit for s in sw.plan if sw.runs[s].status == StepStatus.ACTIVE}
        for sid in sw.plan:
            run = sw.runs[sid]
            if run.status != StepStatus.PENDING:
                continue
            if any(sw.runs[d].status != StepStatus.DONE for d in sw.deps[sid]):
                continue
            st = self._def(sid)
            if st.unit in busy or self.plc.units[st.unit].state == UnitState.BUSY:
                continue
            missing = self._missing(st)
            for r in missing:
                if r.startswith("output_off:"):
                    self._request_off(
                        sw.full_slot if r.endswith("full_slot") else sw.store_slot, out
                    )
            if missing:
                if sw.blocked.get(sid) != missing:
                    sw.blocked[sid] = missing
                    self._emit(
                        out,
                        EventType.SWAP_STEP,
                        SwapStep(
                            swap_id=sw.swap_id,
                            step=sid,
                            unit=st.unit,
                            state=StepChange.BLOCKED,
                            missing=missing,
                        ),
                    )
                continue
            sw.blocked.pop(sid, None)
            if self._start_step(sid, st, now, out):
                busy.add(st.unit)
            if not self._running():
                return  # starting it found an inconsistency and held the swap

    def _running(self) -> bool:
        return self.mode == Mode.RUNNING

    def _start_step(self, sid: str, st: StepDef, now: float, out: list[Action]) -> bool:
        sw = self.swap
        assert sw is not None
        moves: list[Move] = []
        for m in st.moves:
            src, dst = self._place(m.source), self._place(m.to)
            assert src is not None  # the step graph never moves a pack from away
            rec = self.inventory.at(src)
            if rec is None:
                self._inconsistent(out, f"{sid}: no pack recorded at {src}", sid)
                return False
            if dst is not None and self.inventory.at(dst) is not None:
                self._inconsistent(out, f"{sid}: {dst} already holds a pack", sid)
                return False
            moves.append(Move(rec.pack_id, src, dst))
        self.consume_off_confirmations(st)
        unit = st.unit
        self.seq[unit] = self.seq[unit] % 0xFFFF + 1
        run = sw.runs[sid]
        run.status = StepStatus.ACTIVE
        run.seq = self.seq[unit]
        run.attempts += 1
        run.started_at = now
        run.last_sent = now
        run.moves = moves
        run.reason = ""
        if st.plc_step == "unlock":
            sw.unlock_started = True
        if st.plc_step == "lift":
            sw.lift_started = True
        code, arg = self.graph.plc_code(st), self._arg(st)
        self._journal(
            out,
            RecordKind.STEP_INTENT,
            step=sid,
            unit=unit,
            plc_step=st.plc_step,
            code=code,
            arg=arg,
            seq=run.seq,
            attempt=run.attempts,
            moves=[m.row() for m in moves],
        )
        out.append(CommandStep(unit, code, arg, run.seq, sid))
        self._emit(
            out,
            EventType.SWAP_STEP,
            SwapStep(
                swap_id=sw.swap_id,
                step=sid,
                unit=unit,
                state=StepChange.STARTED,
                seq=run.seq,
                attempt=run.attempts,
                moves=_move_refs(run),
            ),
        )
        return True

    def resend_confirmed(self, sw: Swap, sid: str, run: StepRun) -> bool:
        """Seam (issue 12 item 3): a step active at a restart whose command the PLC has not
        acknowledged may never have reached it, so resending it starts it: its slot's off must
        be confirmed by a read after the restart first (and that confirmation is used up)."""
        key = (sw.swap_id, sid, run.seq)
        if key not in self._reconfirm:
            return True
        st = self._def(sid)
        if any(m.startswith("output_off:") for m in self._missing(st)):
            return False
        self.consume_off_confirmations(st)
        self._reconfirm.discard(key)
        return True

    def consume_off_confirmations(self, st: StepDef) -> None:
        """Seam (issue 12 item 3): a step touching a slot uses up that slot's output-off
        confirmation, so every later step there needs a fresh one (never one from the journal
        or from before a fault)."""
        sw = self.swap
        assert sw is not None
        for r in st.requires:
            if r == "output_off:full_slot":
                sw.outputs_off.discard(sw.full_slot)
            elif r == "output_off:store_slot":
                sw.outputs_off.discard(sw.store_slot)

    def _request_off(self, slot: str, out: list[Action]) -> None:
        sw = self.swap
        if sw is None or slot in sw.off_requested or slot in sw.outputs_off:
            return
        sw.off_requested.add(slot)
        out.append(RequestOutputOff(slot))

    def _done(self, sid: str, out: list[Action]) -> None:
        sw = self.swap
        assert sw is not None
        run = sw.runs[sid]
        st = self._def(sid)
        if st.check == "lock_rule" and not self._lock_ok():
            plc = self.plc
            assert plc is not None
            good = bin(plc.lock_engaged & plc.lock_torque_ok).count("1")
            if run.status == StepStatus.ACTIVE:
                self._fail(
                    sid,
                    FaultReason.TORQUE_OUT_OF_WINDOW,
                    f"{good} of {plc.lock_head_count} heads in window, "
                    f"{self.graph.model.locking_rule.min_heads_ok} needed",
                    AlarmCode.ROBOT_STEP_FAULT,
                    out,
                    halt=False,
                )
            return
        for m in run.moves:
            try:
                self.inventory.move(m.pack_id, m.source, m.to)
            except InventoryError as e:
                run.status = StepStatus.DONE
                self._inconsistent(out, f"{sid}: {e}", sid)
                return
            if sw.kind == SwapKind.SWAP and m.to == SlotPlace(sw.store_slot):
                self.awaiting_dock[sw.store_slot] = PackIdentity(sw.announced_pack_id, sw.pack_type)
        if st.plc_step in ("shuttle_to_handoff", "shuttle_to_vehicle"):
            self.shuttle_at = (
                ShuttleAt.HANDOFF if st.plc_step == "shuttle_to_handoff" else ShuttleAt.VEHICLE
            )
        was = run.status
        run.status = StepStatus.DONE
        self._journal(
            out, RecordKind.STEP_DONE, step=sid, seq=run.seq, moves=[m.row() for m in run.moves]
        )
        for m in run.moves:
            # the slots take it from here: a seated pack starts its session
            if isinstance(m.source, SlotPlace):
                out.append(PackRemoved(m.source.slot_id))
            if isinstance(m.to, SlotPlace):
                out.append(PackSeated(m.to.slot_id))
        self._emit(
            out,
            EventType.SWAP_STEP,
            SwapStep(
                swap_id=sw.swap_id,
                step=sid,
                unit=st.unit,
                state=StepChange.DONE,
                seq=run.seq,
                moves=_move_refs(run),
                note="finished before the halt took effect" if was == StepStatus.FAILED else None,
            ),
        )
        if (
            sw.kind == SwapKind.SWAP
            and sw.store_slot in self.pending_docks
            and sw.store_slot in self.awaiting_dock
        ):
            self._on_docked(sw.store_slot, self.pending_docks.pop(sw.store_slot), out)

    def _finish(self, out: list[Action], now: float, *, failed: bool, reason: str) -> None:
        sw = self.swap
        assert sw is not None
        if failed:
            self._journal(out, RecordKind.SWAP_FAILED, reason=reason)
            self._emit(
                out,
                EventType.SWAP_FAILED,
                SwapFailed(
                    swap_id=sw.swap_id,
                    vehicle_id=sw.vehicle_id,
                    step=sw.fault_step,
                    reason=reason,
                    pack_ids=[sw.announced_pack_id, sw.full_pack_id],
                ),
            )
        else:
            self._journal(out, RecordKind.SWAP_COMPLETED)
            self._emit(
                out,
                EventType.SWAP_COMPLETED,
                SwapCompleted(
                    swap_id=sw.swap_id,
                    vehicle_id=sw.vehicle_id,
                    pack_in_id=sw.announced_pack_id,
                    pack_out_id=sw.full_pack_id,
                    store_slot=sw.store_slot,
                    full_slot=sw.full_slot,
                    duration_s=round(max(0.0, now - sw.started_at), 1),
                ),
            )
        self.swap = None
        self.mode = Mode.IDLE
        if self.halted and not self.latched:
            self._set_halt(frozenset(), out)

    # ----- internals: commands

    def _start(self, ev: StartSwap, now: float, out: list[Action]) -> None:
        if self.latched:
            raise Rejected("emergency stop latched: reset-fault first")
        if self.mode != Mode.IDLE or self.swap is not None:
            raise Rejected(f"a swap is already {self.mode.value}")
        if not self.plc_online or self.plc is None:
            raise Rejected("robot PLC offline")
        if not ev.vehicle_id or not ev.pack_type or not ev.announced_pack_id:
            raise Rejected(
                "vehicle_id, pack_type and announced_pack_id are required", "invalid_params"
            )
        if (
            self.inventory.problems()
            or (AlarmCode.INVENTORY_INCONSISTENT, "inventory") in self.alarms
        ):
            raise Rejected("inventory inconsistent: correct it first")
        if self.inventory.get(ev.announced_pack_id) is not None:
            raise Rejected(f"pack {ev.announced_pack_id} is already recorded in the station")
        if self.inventory.at(Handling.VEHICLE) is not None:
            raise Rejected("inventory still has a pack on the vehicle")
        known = {v.slot_id for v in ev.slots}
        if not known <= set(self.slot_numbers):
            raise Rejected(
                f"unknown slots {sorted(known - set(self.slot_numbers))}", "invalid_params"
            )
        try:
            full = choose_pack(ev.slots, ev.pack_type, self.graph.model.pack_choice, self.inventory)
            store = choose_store_slot(ev.slots, self.inventory)
        except NoPackError as e:
            raise Rejected(str(e)) from None
        assert full.pack_id is not None
        self.swap_counter += 1
        plan = self.graph.order()
        sw = Swap(
            swap_id=f"swap-{self.swap_counter:06d}",
            vehicle_id=ev.vehicle_id,
            pack_type=ev.pack_type,
            announced_pack_id=ev.announced_pack_id,
            full_pack_id=full.pack_id,
            full_slot=full.slot_id,
            store_slot=store.slot_id,
            kind=SwapKind.SWAP,
            plan=plan,
            deps={s: list(self._def(s).after) for s in plan},
            runs={s: StepRun() for s in plan},
            started_at=now,
        )
        self.swap = sw
        self.mode = Mode.RUNNING
        self.inventory.add(ev.announced_pack_id, ev.pack_type, Handling.VEHICLE)
        self._journal(
            out,
            RecordKind.SWAP_STARTED,
            vehicle_id=sw.vehicle_id,
            pack_type=sw.pack_type,
            announced_pack_id=sw.announced_pack_id,
            full_pack_id=sw.full_pack_id,
            full_slot=sw.full_slot,
            store_slot=sw.store_slot,
        )
        self._emit(
            out,
            EventType.SWAP_STARTED,
            SwapStarted(
                swap_id=sw.swap_id,
                vehicle_id=sw.vehicle_id,
                pack_type=sw.pack_type,
                announced_pack_id=sw.announced_pack_id,
                full_pack_id=sw.full_pack_id,
                full_slot=sw.full_slot,
                store_slot=sw.store_slot,
                soc_pct=full.soc_pct,
            ),
        )
        self._request_off(sw.full_slot, out)
        self._request_off(sw.store_slot, out)

    def _on_docked(self, slot: str, ident: PackIdentity, out: list[Action]) -> None:
        if slot not in self.slot_numbers:
            return
        place = SlotPlace(slot)
        sw = self.swap
        if slot in self.awaiting_dock:
            expected = self.awaiting_dock.pop(slot)
            exp_id, exp_type = expected.pack_id, expected.pack_type or ""
            if ident.pack_id == exp_id and ident.pack_type in (None, exp_type):
                self._journal(
                    out, RecordKind.PACK_IDENTIFIED, slot=slot, pack_id=ident.pack_id, ok=True
                )
                return
            detail = (
                f"announced {exp_id} ({exp_type}), pack says {ident.pack_id} "
                f"({ident.pack_type or 'type unknown'})"
            )
            self._raise(out, AlarmCode.SWAP_PACK_MISMATCH, slot, detail)
            self._emit(
                out,
                EventType.SWAP_PACK_MISMATCH,
                SwapPackMismatch(
                    swap_id=self._swap_id(),
                    slot_id=slot,
                    announced_pack_id=exp_id,
                    pack_id=ident.pack_id,
                    pack_type=ident.pack_type,
                ),
            )
            self._relabel(place, ident, out, exp_type)
            return
        if (
            sw is not None
            and sw.kind == SwapKind.SWAP
            and slot == sw.store_slot
            and any(
                m.to == "store_slot" and sw.runs[sid].status != StepStatus.DONE
                for sid in sw.plan
                for m in self._def(sid).moves
            )
        ):
            self.pending_docks[slot] = ident  # arrived before the store step was confirmed
            return
        rec = self.inventory.at(place)
        if rec is not None and rec.pack_id == ident.pack_id:
            return
        if rec is None and self.inventory.get(ident.pack_id) is None:
            self.inventory.add(ident.pack_id, ident.pack_type or "", place)
            self._journal(
                out,
                RecordKind.PACK_DISCOVERED,
                slot=slot,
                pack_id=ident.pack_id,
                pack_type=ident.pack_type,
            )
            self._emit(
                out,
                EventType.INVENTORY_CORRECTED,
                InventoryCorrected(
                    swap_id=self._swap_id(),
                    pack_id=ident.pack_id,
                    place=str(place),
                    previous=None,
                    source="docked",
                ),
            )
            return
        self._raise(
            out,
            AlarmCode.INVENTORY_INCONSISTENT,
            "inventory",
            f"slot {slot} reports {ident.pack_id}, inventory has "
            f"{rec.pack_id if rec else 'no pack'}",
        )
        self._relabel(place, ident, out, rec.pack_type if rec else "")

    def _relabel(self, place: Place, ident: PackIdentity, out: list[Action], fallback: str) -> None:
        try:
            old = self.inventory.relabel(place, ident.pack_id, ident.pack_type or fallback)
        except InventoryError as e:
            self._raise(out, AlarmCode.INVENTORY_INCONSISTENT, "inventory", str(e))
            self._journal(out, RecordKind.INVENTORY_INCONSISTENT, detail=str(e))
            return
        self._journal(
            out,
            RecordKind.PACK_RELABELLED,
            place=str(place),
            pack_id=ident.pack_id,
            pack_type=ident.pack_type,
            previous=old,
        )
