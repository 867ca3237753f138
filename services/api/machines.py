"""`/api/v1/machines`: each machine's current state, and its state intervals over a window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from services.api.deps import Calendar, Settings, Store
from services.api.errors import ApiError, responses
from services.api.when import When
from services.context.state import MachineState
from uns.clock import iso

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


class MachineOut(BaseModel):
    id: str
    name: str
    path: str
    state: MachineState
    since: str | None
    updated: str | None
    part_count: int | None


class IntervalOut(BaseModel):
    start: str
    end: str | None
    state: MachineState
    duration_s: float | None
    shift: str | None = None  # "<production date>/<shift name>", None outside every shift
    reason: str | None = None  # why the machine stood: docs/reasons.md
    reason_source: str | None = None  # operator, hold, rule or default
    reason_evidence: str | None = None  # what the rule or person went by: docs/reasons.md
    stop_start: str | None = None  # when the stop this piece is part of began (one stop, many pieces)
    job: str | None = None
    operation: str | None = None
    operator: str | None = None
    hold: str | None = None  # the quality hold open on the machine or its job


class IntervalsOut(BaseModel):
    machine: str
    start: str
    end: str
    intervals: list[IntervalOut]


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def check_window(start: datetime, end: datetime, max_days: int) -> tuple[int, int]:
    """A query's window in UTC ms; 422 when it is backwards or too long."""
    if end <= start:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "end must be after start", ["query", "end"])
    if end - start > timedelta(days=max_days):
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"window is longer than {max_days} days",
            ["query", "start"],
        )
    return _ms(start), _ms(end)


@router.get("", response_model=list[MachineOut], summary="Every machine's current state and since when")
def list_machines(store: Store) -> list[MachineOut]:
    return [
        MachineOut(
            id=c.machine_id,
            name=c.name,
            path=c.path,
            state=c.state,
            since=iso(c.since_ms) if c.since_ms is not None else None,
            updated=iso(c.updated_ms) if c.updated_ms is not None else None,
            part_count=c.counter,
        )
        for c in store.current_states()
    ]


@router.get(
    "/{machine_id}/intervals",
    response_model=IntervalsOut,
    summary="State intervals in a time window",
    responses=responses(404, 422),
)
def machine_intervals(
    machine_id: str,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    start: Annotated[When, Query(description="window start, ISO-8601 with offset")],
    end: Annotated[When, Query(description="window end, ISO-8601 with offset")],
) -> IntervalsOut:
    """Intervals overlapping [start, end), in time order and not clipped; the current one has no end.

    With a shift calendar in the site model, closed intervals are cut at shift boundaries and each
    piece names its shift; the current interval names the shift it began in, and carries the job,
    operation, operator, reason and evidence it has now. Pieces of one stop share `stop_start`."""
    current = store.current_state(machine_id)
    if current is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machine {machine_id!r} in the site model", ["path", "machine_id"]
        )
    start_ms, end_ms = check_window(start, end, settings.max_interval_days)
    out: list[IntervalOut] = []
    for i in store.intervals(machine_id, start_ms, end_ms):
        pieces = calendar.split(i.start_ms, i.end_ms) if calendar else [(i.start_ms, i.end_ms, None)]
        out += [
            IntervalOut(
                start=iso(a),
                end=iso(b),
                state=i.state,
                duration_s=(b - a) / 1000,
                shift=shift.key if shift else None,
                reason=i.reason,
                reason_source=i.source,
                reason_evidence=i.evidence,
                stop_start=iso(i.stop_start_ms) if i.stop_start_ms is not None else None,
                job=i.job,
                operation=i.operation,
                operator=i.operator,
                hold=i.hold,
            )
            for a, b, shift in pieces
        ]
    if current.since_ms is not None and current.since_ms < end_ms:
        # the open interval, with the context of its latest piece as the context service last wrote
        # it (job, operation, operator, reason and evidence now; the shift it began in)
        piece = current.piece or {}
        shift = calendar.shift_at(current.since_ms) if calendar else None
        out.append(
            IntervalOut(
                start=iso(current.since_ms),
                end=None,
                state=current.state,
                duration_s=None,
                shift=shift.key if shift else None,
                reason=piece.get("reason"),
                reason_source=piece.get("reason_source"),
                reason_evidence=piece.get("reason_evidence"),
                stop_start=piece.get("stop_start"),
                job=piece.get("job"),
                operation=piece.get("operation"),
                operator=piece.get("operator"),
                hold=piece.get("hold"),
            )
        )
    return IntervalsOut(machine=machine_id, start=iso(start_ms), end=iso(end_ms), intervals=out)
