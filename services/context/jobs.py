"""Which dispatched operation a machine is working on, without anyone typing it in. Pure.

- A program change to the program of exactly one queued operation starts it; the operation that was
  running completes (`next_op`).
- When two or more queued operations use that program, the book asks for a confirmation (the
  machine's `job` topic and the API show it); confirming one starts it at the program change.
- Work released (a dispatch that says when: `at`) before the program change it is for, but reaching
  the service after it (an ERP's sync lags the floor), is started by that program change all the same
  (`on_release`): the order in which the messages arrive decides nothing.
- Reaching the quantity (good parts: made minus scrap and rework) completes the operation.
- Start, pause, resume and complete by hand are always possible.

The book only decides; every decision is an `OpEvent`, which the service stores. The record is
rebuilt from those events, never by deciding again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.context.commands import CommandError
from services.context.timeline import OpEvent

PLANNED, ACTIVE, PAUSED, COMPLETE, CANCELLED = "planned", "active", "paused", "complete", "cancelled"


@dataclass
class Operation:
    job: str
    operation: str
    machine_id: str
    program: str
    quantity: int
    sequence: int = 0
    part_number: str = ""
    ideal_cycle_ms: int | None = None
    planned_start_ms: int | None = None
    planned_end_ms: int | None = None
    status: str = PLANNED
    actual_start_ms: int | None = None
    actual_end_ms: int | None = None
    made: int = 0
    scrap: int = 0
    rework: int = 0
    dispatched_ms: int | None = None  # when it was first put on the machine's list

    @property
    def key(self) -> tuple[str, str]:
        return (self.job, self.operation)

    @property
    def good(self) -> int:
        return max(self.made - self.scrap - self.rework, 0)


@dataclass(frozen=True, slots=True)
class Pending:
    """A program change that two or more queued operations could be."""

    ts: int
    program: str
    candidates: tuple[tuple[str, str], ...]


@dataclass
class OperationBook:
    """One machine's dispatched operations and which one it is on."""

    machine_id: str
    ops: dict[tuple[str, str], Operation] = field(default_factory=dict)
    pending: Pending | None = None
    program: str | None = None  # the program last seen loaded
    program_ms: int | None = None  # when it was loaded (its program change), if seen
    decided_ms: int | None = None  # the latest operation event decided since the service started

    @property
    def active(self) -> Operation | None:
        return next((o for o in self.ops.values() if o.status in (ACTIVE, PAUSED)), None)

    def queue(self) -> list[Operation]:
        """Operations not started yet, in dispatch order."""
        return sorted(
            (o for o in self.ops.values() if o.status == PLANNED),
            key=lambda o: (o.sequence, o.planned_start_ms or 0, o.job, o.operation),
        )

    # -- from the machine --------------------------------------------------------------------
    def on_program(self, ts: int, program: str | None) -> list[OpEvent]:
        if not program or program == self.program:
            self.program = program or self.program
            return []
        # the first program seen (a birth) was loaded at a time unknown: no late release starts it
        self.program_ms = ts if self.program is not None else None
        self.program = program
        self.pending = None  # a new program: an older question no longer stands
        return self._program_change(ts, program)

    def on_release(self, released_ms: int) -> list[OpEvent]:
        """Work put on the list as released at `released_ms` has come in after the program change
        that followed that moment: the change decides now as it would have then, among the
        operations released by then. Nothing changes when the program was loaded before the release,
        or anything was decided about an operation since the change (started, paused or completed,
        by hand or by quantity)."""
        program, ts = self.program, self.program_ms
        if program is None or ts is None or released_ms > ts or self.pending is not None:
            return []
        if self.decided_ms is not None and self.decided_ms > ts:
            return []  # a decision after the program change stands
        return self._program_change(ts, program, released_by=ts)

    def _program_change(self, ts: int, program: str, released_by: int | None = None) -> list[OpEvent]:
        """`released_by`: only operations released (`dispatched_ms`) by then are candidates."""
        active = self.active
        if active is not None and active.program == program:
            return []
        candidates = [
            o
            for o in self.queue()
            if o.program == program
            and (released_by is None or (o.dispatched_ms is not None and o.dispatched_ms <= released_by))
        ]
        if not candidates:
            return []
        if len(candidates) > 1:
            self.pending = Pending(ts, program, tuple(o.key for o in candidates))
            return []
        return self._start(candidates[0], ts, "program", None)

    def on_parts(self, ts: int, delta: int) -> list[OpEvent]:
        active = self.active
        if active is None or active.status != ACTIVE:
            return []
        active.made += delta
        return self._check_quantity(active, ts)

    def on_quality(self, op: Operation, result: str, quantity: int) -> None:
        if result in ("scrap", "fail"):
            op.scrap += quantity
        elif result == "rework":
            op.rework += quantity

    def _check_quantity(self, op: Operation, ts: int) -> list[OpEvent]:
        if op.good >= op.quantity:
            return [self._event(op, ts, "complete", "quantity", None)]
        return []

    # -- from people -------------------------------------------------------------------------
    def command(self, action: str, key: tuple[str, str], ts: int, by: str | None) -> list[OpEvent]:
        op = self.ops.get(key)
        if op is None:
            raise CommandError(
                f"no operation {key[0]}/{key[1]} is dispatched to machine {self.machine_id!r}", 404
            )
        where = f"operation {op.job}/{op.operation} on {self.machine_id}"
        if action == "confirm":
            pending = self.pending
            if pending is None or key not in pending.candidates:
                choices = ", ".join(f"{j}/{o}" for j, o in pending.candidates) if pending else "none pending"
                raise CommandError(f"{where}: nothing to confirm ({choices})", 409)
            self.pending = None
            return self._start(op, pending.ts, "confirm", by)  # it began at the program change
        if action == "start":
            if op.status not in (PLANNED, PAUSED):
                raise CommandError(f"{where} is {op.status}; only a planned operation can start", 409)
            if op.status == PAUSED:
                return [self._event(op, ts, "resume", "manual", by)]
            return self._start(op, ts, "manual", by)
        if action == "pause":
            if op.status != ACTIVE:
                raise CommandError(f"{where} is {op.status}; only an active operation can pause", 409)
            return [self._event(op, ts, "pause", "manual", by)]
        if action == "resume":
            if op.status != PAUSED:
                raise CommandError(f"{where} is {op.status}; only a paused operation can resume", 409)
            return [self._event(op, ts, "resume", "manual", by)]
        if action == "complete":
            if op.status not in (ACTIVE, PAUSED):
                raise CommandError(f"{where} is {op.status}; only a started operation can complete", 409)
            return [self._event(op, ts, "complete", "manual", by)]
        raise CommandError(f"unknown operation action {action!r}")

    def _start(self, op: Operation, ts: int, cause: str, by: str | None) -> list[OpEvent]:
        events = []
        active = self.active
        if active is not None and active is not op:
            events.append(self._event(active, ts, "complete", "next_op", by))
        events.append(self._event(op, ts, "start", cause, by))
        return events

    def _event(self, op: Operation, ts: int, action: str, cause: str, by: str | None) -> OpEvent:
        event = OpEvent(self.machine_id, ts, op.job, op.operation, action, cause, by)
        self.decided_ms = ts if self.decided_ms is None else max(self.decided_ms, ts)
        self.apply(event)
        return event

    def apply(self, event: OpEvent) -> None:
        """Bring an operation's status up to an event (used when deciding and when loading)."""
        op = self.ops.get((event.job, event.operation))
        if op is None:
            return
        if event.action == "start":
            op.status = ACTIVE
            op.actual_start_ms = event.ts
        elif event.action == "pause":
            op.status = PAUSED
        elif event.action == "resume":
            op.status = ACTIVE
        elif event.action == "complete":
            op.status = COMPLETE
            op.actual_end_ms = event.ts
