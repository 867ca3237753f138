"""Applying commands to the record: checked against the site model, the dispatch list and the record,
stored, and put on the machines' timelines. What a command says about the past (an `at` before the
machine's latest data) makes the service recompute that machine's record from then.

Every refusal is a `CommandError` whose message names what and where; nothing is stored then.

A site split into context workers (`context.workers`): every worker hears every command and exactly
one applies or refuses it, decided by `Intake.owner` from the site model alone (and, for a hold's
close, the record's hold): the worker that keeps the machine the command names. What names no
machine of one worker goes to the lead (the first worker listed), which refuses it if it spans
workers: a dispatch for a cell whose machines several workers keep, a hold on a job without a
machine, an operation to move from one worker's machine to another's while it is planned there.
Unreadable commands and unknown machines are the lead's to refuse too.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.context.commands import (
    Command,
    CommandError,
    Dispatch,
    DispatchUpdate,
    HoldCommand,
    OperationCommand,
    OperatorCommand,
    PartsCommand,
    PlannedOperation,
    ReasonCommand,
    ms,
    parse,
)
from services.context.jobs import CANCELLED, PLANNED, Operation
from services.context.record import said
from services.context.state import MachineState
from services.context.timeline import Hold
from uns.clock import iso

if TYPE_CHECKING:
    from services.context.app import ContextService

FUTURE_MS = 60_000  # `at` may be this far ahead of the service's clock (clocks differ a little)


FUTURE_SLACK_MS = 60_000  # a stop_at this far ahead of our clock is a clock out of step, not the future


class Intake:
    def __init__(self, service: ContextService) -> None:
        self.service = service
        site = service.site
        self.machines = {m.id: m for m in site.machines}
        self.cells: dict[str, list[str]] = {}
        for m in site.machines:
            self.cells.setdefault(f"{m.path.area}/{m.path.line}/{m.path.cell}", []).append(m.id)
        self.window_ms = int(site.config.downtime.reason_window_hours * 3_600_000)
        self.worker = service.partition.name
        self.workers = {m.id: site.owner(m).name for m in site.machines}  # machine -> its worker
        self.lead = service.partition == site.partitions()[0]

    # -- which worker answers ---------------------------------------------------------------------
    def mine(self, kind: str, payload: bytes) -> bool:
        """Whether this worker applies (or refuses) the command: always, without workers."""
        return not self.service.site.partitioned or self.owner(kind, payload) == self.worker

    def owner(self, kind: str, payload: bytes) -> str:
        """The worker that answers a command (see the module's docstring)."""
        lead = self.service.site.partitions()[0].name
        try:
            cmd = parse(kind, payload)
        except CommandError:
            return lead  # refused by the lead
        machine: str | None
        if isinstance(cmd, Dispatch):
            if cmd.cell is not None and cmd.machine is None:
                owners = {self.workers[m] for m in self.cells.get(cmd.cell, [])}
                return owners.pop() if len(owners) == 1 else lead
            machine = cmd.machine if cmd.cell is None else None
        elif isinstance(cmd, DispatchUpdate):
            machine = cmd.operation.machine
        elif isinstance(cmd, HoldCommand):
            machine = cmd.machine
            if cmd.action == "close":  # the worker that keeps the hold's machine, whatever it says
                held = next((h for h in self.service.store.holds() if h.hold_id == cmd.hold), None)
                if held is not None:
                    machine = held.machine_id
        else:
            machine = cmd.machine
        return self.workers.get(machine or "", lead)

    def apply(self, cmd: Command, via: str) -> dict[str, Any]:
        now = self.service.clock.now_ms()
        at = now if cmd.at is None else ms(cmd.at)
        if at > now + FUTURE_MS:
            raise CommandError(f"{cmd.kind}: at {iso(at)} is in the future (now {iso(now)})")
        if isinstance(cmd, Dispatch):
            return self._dispatch(cmd, via, now, at)
        if isinstance(cmd, DispatchUpdate):
            return self._dispatch_update(cmd, via, now, at)
        if isinstance(cmd, OperationCommand):
            return self._operation(cmd, at)
        if isinstance(cmd, OperatorCommand):
            return self._operator(cmd, at, via)
        if isinstance(cmd, ReasonCommand):
            return self._reason(cmd, via, now)
        if isinstance(cmd, HoldCommand):
            return self._hold(cmd, at)
        return self._parts(cmd, at, via)

    # -- helpers --------------------------------------------------------------------------------
    def _machine(self, machine_id: str, what: str) -> str:
        if machine_id not in self.machines:
            raise CommandError(f"{what}: no machine {machine_id!r} in the site model", 404)
        if machine_id not in self.service.trackers:
            raise CommandError(
                f"{what}: machine {machine_id} is kept by context worker {self.workers[machine_id]!r},"
                f" not by this one ({self.worker!r})",
                409,
            )
        return machine_id

    def _past(self, machine_id: str, at: int) -> None:
        """Recompute the machine's record from `at` if its data already reached past it."""
        tracker = self.service.trackers[machine_id]
        if tracker.updated_ms is not None and at < tracker.updated_ms:
            self.service.rebuild(machine_id, at)
        self.service.touch(machine_id)

    # -- dispatch -------------------------------------------------------------------------------
    def _planned(self, p: PlannedOperation, where: str, existing: Operation | None, now: int) -> Operation:
        self._machine(p.machine, where)
        if p.planned_start and p.planned_end and p.planned_end <= p.planned_start:
            raise CommandError(f"{where}: planned_end must be after planned_start")
        op = Operation(
            p.job,
            p.operation,
            p.machine,
            p.program,
            p.quantity,
            p.sequence,
            p.part_number,
            int(p.ideal_cycle_s * 1000) if p.ideal_cycle_s else None,
            ms(p.planned_start) if p.planned_start else None,
            ms(p.planned_end) if p.planned_end else None,
        )
        op.dispatched_ms = existing.dispatched_ms if existing is not None else now
        if (
            existing is not None
            and existing.status == PLANNED
            and existing.machine_id not in self.service.books
        ):
            raise CommandError(
                f"{where}: {p.job}/{p.operation} is planned on {existing.machine_id}, which context"
                f" worker {self.workers.get(existing.machine_id)!r} keeps: cancel it there first"
                " (dispatch_update with cancel: true), then plan it here",
                409,
            )
        if existing is not None and existing.status not in (PLANNED, CANCELLED):
            if existing.machine_id != p.machine:
                raise CommandError(
                    f"{where}: {p.job}/{p.operation} is already {existing.status} on {existing.machine_id}; "
                    "it cannot move to another machine",
                    409,
                )
            op.status, op.actual_start_ms, op.actual_end_ms = (
                existing.status,
                existing.actual_start_ms,
                existing.actual_end_ms,
            )
        return op

    def _all_ops(self) -> dict[tuple[str, str], Operation]:
        """Every dispatched operation: this worker's books, and the record's of the other workers'
        machines (to check against; those books are theirs)."""
        ops = {k: o for book in self.service.books.values() for k, o in book.ops.items()}
        if self.service.site.partitioned:
            for o in self.service.store.operations():
                if o.machine_id not in self.service.books:
                    ops.setdefault(o.key, o)
        return ops

    def _dispatch(self, cmd: Dispatch, via: str, now: int, at: int) -> dict[str, Any]:
        if (cmd.machine is None) == (cmd.cell is None):
            raise CommandError(
                "dispatch: give either machine or cell (the list replaces what is planned there)"
            )
        if cmd.machine is not None:
            scope, machines = f"machine {cmd.machine}", [self._machine(cmd.machine, "dispatch")]
        else:
            assert cmd.cell is not None
            if cmd.cell not in self.cells:
                raise CommandError(f"dispatch: no cell {cmd.cell!r} in the site model", 404)
            scope, machines = f"cell {cmd.cell}", self.cells[cmd.cell]
            by_worker: dict[str, list[str]] = {}
            for m in machines:
                by_worker.setdefault(self.workers[m], []).append(m)
            if len(by_worker) > 1:
                kept = "; ".join(f"{w!r}: {', '.join(names)}" for w, names in by_worker.items())
                raise CommandError(
                    f"dispatch: the machines of cell {cmd.cell} are kept by several context workers"
                    f" ({kept}): send a dispatch for each machine",
                    409,
                )
        existing = self._all_ops()
        ops: list[Operation] = []
        seen: set[tuple[str, str]] = set()
        for n, p in enumerate(cmd.operations):
            where = f"dispatch operations[{n}] ({p.job}/{p.operation})"
            if p.machine not in machines and p.machine in self.machines:
                raise CommandError(f"{where}: machine {p.machine!r} is not in {scope}")
            if (p.job, p.operation) in seen:
                raise CommandError(f"{where}: listed twice")
            seen.add((p.job, p.operation))
            ops.append(self._planned(p, where, existing.get((p.job, p.operation)), at))
        drop = [
            k
            for k, o in existing.items()
            if o.machine_id in machines and o.status == PLANNED and k not in seen
        ]
        version = self.service.store.save_dispatch(
            scope, cmd.by, via, now, cmd.model_dump_json(exclude={"reply_to", "id"}), ops, drop, at
        )
        self._reload(set(machines) | {existing[k].machine_id for k in seen if k in existing}, cmd.at)
        return {"version": version, "operations": len(ops), "dropped": [f"{j}/{o}" for j, o in drop]}

    def _dispatch_update(self, cmd: DispatchUpdate, via: str, now: int, at: int) -> dict[str, Any]:
        p = cmd.operation
        where = f"dispatch_update {p.job}/{p.operation}"
        existing = self._all_ops().get((p.job, p.operation))
        drop: list[tuple[str, str]] = []
        ops: list[Operation] = []
        if cmd.cancel:
            if existing is None:
                raise CommandError(f"{where}: no such operation is dispatched", 404)
            if existing.status != PLANNED:
                raise CommandError(
                    f"{where}: it is {existing.status}; only a planned operation can be cancelled", 409
                )
            drop = [existing.key]
        else:
            ops = [self._planned(p, where, existing, at)]
        version = self.service.store.save_dispatch(
            f"operation {p.job}/{p.operation}",
            cmd.by,
            via,
            now,
            cmd.model_dump_json(exclude={"reply_to", "id"}),
            ops,
            drop,
            at,
        )
        self._reload({p.machine} | ({existing.machine_id} if existing else set()), cmd.at)
        return {"version": version, "cancelled": cmd.cancel}

    def _reload(self, machines: set[str], released: datetime | None = None) -> None:
        """The books of these machines from the record (counts included); confirmations that no longer
        have two planned candidates lapse. A dispatch that says when the work was released (`at`)
        recomputes the record from then (it decides where a machine had no work)."""
        store = self.service.store
        for machine_id in sorted(machines & self.service.books.keys()):  # (the others: not ours)
            book = self.service.books[machine_id]
            book.ops = {o.key: o for o in store.operations(machine_id)}
            ctx = self.service.contexts[machine_id]
            ctx.dispatched = {k: o.dispatched_ms for k, o in book.ops.items()}
            ctx.dropped = store.dropped(machine_id)
            if book.pending is not None:
                still = tuple(
                    k for k in book.pending.candidates if k in book.ops and book.ops[k].status == PLANNED
                )
                if len(still) < 2:
                    book.pending = None
                    store.set_pending(machine_id, None)
            if released is not None:
                at = ms(released)
                pending = book.pending
                started = book.on_release(at)  # released before a program change that came first
                if book.pending != pending:
                    store.set_pending(machine_id, book.pending)
                if started:
                    self.service.record_op_events(machine_id, started)
                self._past(machine_id, at)
                if started:  # the parts made since the program change are the started operation's
                    book.ops = {o.key: o for o in store.operations(machine_id)}
            self.service.touch(machine_id)

    # -- operations, operators -------------------------------------------------------------------
    def _operation(self, cmd: OperationCommand, at: int) -> dict[str, Any]:
        machine_id = self._machine(cmd.machine, f"operation {cmd.action}")
        book = self.service.books[machine_id]
        pending = book.pending
        events = book.command(cmd.action, (cmd.job, cmd.operation), at, cmd.by)
        if pending is not None and book.pending is None:
            self.service.store.set_pending(machine_id, None)
        self.service.record_op_events(machine_id, events)
        self._past(machine_id, min(e.ts for e in events))
        if cmd.action == "confirm":
            # the parts made since the program change are the confirmed operation's now
            self._reload({machine_id})
            active = book.active
            if active is not None and active.good >= active.quantity:
                last = self.service.trackers[machine_id].updated_ms or at
                done = book.command("complete", active.key, last, None)
                self.service.record_op_events(machine_id, done)
                events += done
        return {
            "events": [
                {"job": e.job, "operation": e.operation, "action": e.action, "at": iso(e.ts)} for e in events
            ]
        }

    def _operator(self, cmd: OperatorCommand, at: int, via: str) -> dict[str, Any]:
        machine_id = self._machine(cmd.machine, f"operator {cmd.action}")
        ctx = self.service.contexts[machine_id]
        current = ctx.operator_at(at)
        if cmd.action == "logout" and current != cmd.operator:
            raise CommandError(
                f"operator logout: {cmd.operator!r} is not logged in on {machine_id} at {iso(at)}"
                + (f" ({current!r} is)" if current else " (nobody is)"),
                409,
            )
        operator = cmd.operator if cmd.action == "login" else None
        self.service.store.add_operator_event(machine_id, at, operator, via)
        ctx.add_operator(at, operator)
        self._past(machine_id, at)
        return {"machine": machine_id, "operator": operator, "previous": current}

    # -- reasons --------------------------------------------------------------------------------
    def _reason(self, cmd: ReasonCommand, via: str, now: int) -> dict[str, Any]:
        machine_id = self._machine(cmd.machine, "reason")
        taxonomy = self.service.taxonomy
        if cmd.reason not in taxonomy:
            raise CommandError(
                f"reason: unknown reason code {cmd.reason!r} (known: {', '.join(sorted(taxonomy))})", 404
            )
        t = ms(cmd.stop_at)
        if t > now + FUTURE_SLACK_MS:
            raise CommandError(
                f"reason: stop_at {iso(t)} is in the future (now {iso(now)}); give a moment of the stop",
                422,
            )
        service = self.service
        tracker = service.trackers[machine_id]
        if tracker.since_ms is not None and t >= tracker.since_ms:
            piece = service.current(machine_id)
            assert piece is not None
            state, old, ended = tracker.state, piece.reason, now
            stop = piece.stop_start_ms if piece.stop_start_ms is not None else tracker.since_ms
        else:
            found = service.store.intervals(machine_id, t, t + 1)
            if not found:
                raise CommandError(f"reason: the record has nothing for {machine_id} at {iso(t)}", 404)
            piece = found[0]
            run_start = piece.run_start_ms if piece.run_start_ms is not None else piece.start_ms
            stop = piece.stop_start_ms if piece.stop_start_ms is not None else run_start
            state, old = piece.state, piece.reason
            ended = _stop_end(service, machine_id, stop, piece.end_ms, now)
        if state is MachineState.RUNNING:
            raise CommandError(f"reason: {machine_id} was running at {iso(t)}; only stops take a reason", 409)
        if now - ended > self.window_ms:
            hours, ago = self.window_ms / 3_600_000, (now - ended) / 3_600_000
            raise CommandError(
                f"reason: the stop of {machine_id} at {iso(t)} ended {ago:.1f} h ago; "
                f"reasons can be set up to {hours:g} h after a stop"
                " (site model: downtime.reason_window_hours)",
                422,
            )
        service.store.set_reason(machine_id, stop, old, cmd.reason, cmd.by, via, now, cmd.note)
        service.contexts[machine_id].overrides[stop] = (cmd.reason, said(cmd.by, via, now, cmd.note))
        service.touch(machine_id)
        return {"machine": machine_id, "stop_start": iso(stop), "old": old, "new": cmd.reason}

    # -- quality ----------------------------------------------------------------------------------
    def _hold(self, cmd: HoldCommand, at: int) -> dict[str, Any]:
        service = self.service
        holds = service.holds
        where = f"hold {cmd.action} {cmd.hold}"
        known = next((i for i, h in enumerate(holds) if h.hold_id == cmd.hold), None)
        if cmd.action == "open":
            if known is not None:
                raise CommandError(f"{where}: a hold with this id exists already", 409)
            if cmd.machine is None and cmd.job is None:
                raise CommandError(f"{where}: give the machine, the job, or both")
            if cmd.machine is None and service.site.partitioned:
                raise CommandError(
                    f"{where}: the context service is split into workers (context.workers), each"
                    " keeping its own machines: a hold names its machine (one hold per machine of"
                    " the job)"
                )
            if cmd.operation is not None and cmd.job is None:
                raise CommandError(f"{where}: an operation needs its job")
            if cmd.machine is not None:
                self._machine(cmd.machine, where)
            if cmd.job is not None:
                ops = [o for o in self._all_ops().values() if o.job == cmd.job]
                if not ops:
                    raise CommandError(f"{where}: no job {cmd.job!r} in the dispatch list", 404)
                if cmd.operation is not None and not any(o.operation == cmd.operation for o in ops):
                    raise CommandError(f"{where}: job {cmd.job} has no operation {cmd.operation!r}", 404)
            hold = Hold(cmd.hold, at, None, cmd.machine, cmd.job, cmd.operation, cmd.note)
            holds.append(hold)
            service.store.put_hold(hold, cmd.by, None)
        else:
            if known is None:
                raise CommandError(f"{where}: no such hold", 404)
            old = holds[known]
            if old.closed_ms is not None:
                raise CommandError(f"{where}: it was closed at {iso(old.closed_ms)}", 409)
            if at < old.opened_ms:
                raise CommandError(f"{where}: at {iso(at)} is before it opened ({iso(old.opened_ms)})")
            hold = Hold(old.hold_id, old.opened_ms, at, old.machine_id, old.job, old.operation, old.note)
            holds[known] = hold
            service.store.put_hold(hold, None, cmd.by)
        for machine_id in self._held(hold):
            self._past(machine_id, at)
        return {"hold": hold.hold_id, "machines": sorted(self._held(hold))}

    def _held(self, hold: Hold) -> set[str]:
        if hold.machine_id is not None:
            return {hold.machine_id}
        return {
            o.machine_id
            for o in self._all_ops().values()
            if o.job == hold.job and o.machine_id in self.service.trackers
        }

    def _parts(self, cmd: PartsCommand, at: int, via: str) -> dict[str, Any]:
        machine_id = self._machine(cmd.machine, "parts")
        service = self.service
        book = service.books[machine_id]
        if cmd.job is not None or cmd.operation is not None:
            if cmd.job is None or cmd.operation is None:
                raise CommandError("parts: give both job and operation, or neither (the current operation)")
            key: tuple[str, str] | None = (cmd.job, cmd.operation)
            if key not in book.ops:
                raise CommandError(
                    f"parts: no operation {cmd.job}/{cmd.operation} is dispatched to {machine_id}", 404
                )
        else:
            key = service.contexts[machine_id].operation_at(at, before=True)
        shift = service.calendar.shift_at(at) if service.calendar is not None else None
        service.store.add_quality(
            machine_id, at, key, shift.key if shift else None, cmd.result, cmd.quantity, cmd.by, via
        )
        if key is not None and key in book.ops:
            book.on_quality(book.ops[key], cmd.result, cmd.quantity)
        service.contexts[machine_id].add_verdict(at)  # an inspection verdict ends a wait for one
        self._past(machine_id, at)
        return {
            "machine": machine_id,
            "job": key[0] if key else None,
            "operation": key[1] if key else None,
            "shift": shift.key if shift else None,
        }


def _stop_end(service: ContextService, machine_id: str, stop: int, end: int, now: int) -> int:
    """Where a stop that began at `stop` ended: follow its pieces to the last (`now` if it goes on)."""
    while True:
        more = [i for i in service.store.intervals(machine_id, end, end + 1) if i.stop_of == stop]
        if not more:
            tracker = service.trackers[machine_id]
            going_on = tracker.since_ms is not None and end >= tracker.since_ms
            if going_on and tracker.story_at_start.stop_start_ms == stop:
                return now
            return end
        end = max(i.end_ms for i in more)
