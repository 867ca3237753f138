"""The readable ISA-95 tree's documents (docs/topics.md): what the context service publishes under
`<enterprise>/<site>/<area>/<line>/<cell>/<machine>/`: `state` and `job` (retained JSON) and
`intervals` (each closed record interval as it is written). Pure: from the machine's tracker, its
operations and the record's pieces to JSON-ready dicts."""

from __future__ import annotations

from typing import Any

from services.context.jobs import Operation, OperationBook
from services.context.state import Interval, MachineTracker
from uns.clock import iso
from uns.site import Machine, Signal


def state_document(machine: Machine, tracker: MachineTracker, piece: Interval | None) -> dict[str, Any]:
    """The retained `state` JSON (`piece`: the open interval's current piece, with its context).
    What it reads of the tracker is in `state_key` too."""
    sig = tracker.signals
    alarm = sig.get(Signal.ALARM_CODE)
    return {
        "machine": machine.id,
        "name": machine.name,
        "path": str(machine.path),
        "state": tracker.state.value,
        "since": iso(tracker.since_ms) if tracker.since_ms is not None else None,
        "updated": iso(tracker.updated_ms) if tracker.updated_ms is not None else None,
        "execution": sig.get(Signal.EXECUTION),
        "mode": sig.get(Signal.MODE),
        "program": sig.get(Signal.PROGRAM),
        "alarm": {"code": alarm, "text": sig.get(Signal.ALARM_TEXT)} if alarm else None,
        "emergency_stop": sig.get(Signal.ESTOP),
        "part_count": tracker.counter,
        **context_json(piece),
    }


def state_key(tracker: MachineTracker) -> tuple[Any, ...]:
    """What a machine's `state` document and its current_state row are made of, besides `updated`,
    the time and what was said about the machine (its context: commands, operations): while this
    stays the same, a value that came in changed nothing in either but `updated`."""
    sig = tracker.signals
    return (
        tracker.state,
        tracker.since_ms,
        tracker.counter,
        tracker.story_at_start,
        tracker.story,
        sig.get(Signal.EXECUTION),
        sig.get(Signal.MODE),
        sig.get(Signal.PROGRAM),
        sig.get(Signal.ALARM_CODE),
        sig.get(Signal.ALARM_TEXT),
        sig.get(Signal.ESTOP),
    )


def job_document(machine: Machine, book: OperationBook, now_ms: int) -> dict[str, Any]:
    """The retained `job` JSON: the machine's current operation with its counts, what is queued next,
    and whether a program change waits for a confirmation."""
    op = book.active
    queue = book.queue()
    pending = book.pending
    return {
        "machine": machine.id,
        "updated": iso(now_ms),
        "operation": None if op is None else operation_json(op),
        "next": [operation_json(o) for o in queue[:3]],
        "queued": len(queue),
        "confirmation_needed": None
        if pending is None
        else {
            "since": iso(pending.ts),
            "program": pending.program,
            "candidates": [{"job": j, "operation": o} for j, o in pending.candidates],
        },
    }


def context_json(piece: Interval | None) -> dict[str, Any]:
    if piece is None:
        return {
            "reason": None,
            "reason_source": None,
            "reason_evidence": None,
            "stop_start": None,
            "job": None,
            "operation": None,
            "operator": None,
            "shift": None,
            "hold": None,
        }
    return {
        "reason": piece.reason,
        "reason_source": piece.source,
        "reason_evidence": piece.evidence,
        "stop_start": iso(piece.stop_start_ms) if piece.stop_start_ms is not None else None,
        "job": piece.job,
        "operation": piece.operation,
        "operator": piece.operator,
        "shift": piece.shift,
        "hold": piece.hold,
    }


def operation_json(op: Operation) -> dict[str, Any]:
    return {
        "job": op.job,
        "operation": op.operation,
        "part_number": op.part_number,
        "program": op.program,
        "status": op.status,
        "quantity": op.quantity,
        "made": op.made,
        "good": op.good,
        "scrap": op.scrap,
        "rework": op.rework,
        "planned_start": iso(op.planned_start_ms) if op.planned_start_ms is not None else None,
        "planned_end": iso(op.planned_end_ms) if op.planned_end_ms is not None else None,
        "actual_start": iso(op.actual_start_ms) if op.actual_start_ms is not None else None,
        "actual_end": iso(op.actual_end_ms) if op.actual_end_ms is not None else None,
    }


def interval_json(i: Interval, *, revised: bool = False) -> dict[str, Any]:
    """A closed record interval as published on `<machine>/intervals` (`revised`: a recomputation
    after a backfill or a correction replaces what was announced before for that time)."""
    return {
        "machine": i.machine_id,
        "start": iso(i.start_ms),
        "end": iso(i.end_ms),
        "duration_s": (i.end_ms - i.start_ms) / 1000,
        "state": i.state.value,
        **context_json(i),
        "revised": revised,
    }
