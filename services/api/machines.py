"""`/api/v1/machines`: each machine's current state and the parts it made this shift, and its state
intervals over a window. Times in UTC with the site's local time beside them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from services.api.deps import Calendar, Settings, Store
from services.api.errors import ApiError, responses
from services.api.when import (
    CURRENT_SHIFT,
    Range,
    When,
    hm,
    local,
    local_date,
    local_or_none,
    midnight,
    resolve,
    site_zone,
)
from services.context.state import MachineState
from uns.clock import iso

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


class MachineOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "vf2-01",
                    "name": "Haas VF-2 (1)",
                    "path": "acme/dayton/machining/mills/cell-1/vf2-01",
                    "state": "running",
                    "since": "2026-11-18T19:42:10.000Z",
                    "since_local": "2026-11-18T14:42:10-05:00",
                    "updated": "2026-11-18T19:50:02.000Z",
                    "updated_local": "2026-11-18T14:50:02-05:00",
                    "shift": "2026-11-18/second",
                    "parts_made": 37,
                    "parts_good": 36,
                    "parts_since": "2026-11-18T19:00:00.000Z",
                    "parts_since_local": "2026-11-18T14:00:00-05:00",
                    "controller_counter": 48211,
                }
            ]
        }
    }

    id: str
    name: str
    path: str
    state: MachineState
    since: str | None
    since_local: str | None = Field(description="`since` in the site's local time")
    updated: str | None
    updated_local: str | None
    shift: str | None = Field(description="the shift now (`<production date>/<name>`); None: outside shifts")
    parts_made: int = Field(
        description="parts made since `parts_since` (the current shift's start, else the production"
        " day's): the counter's increments, resets and rollovers handled"
    )
    parts_good: int = Field(description="parts_made less the scrap and rework reported since then")
    parts_since: str
    parts_since_local: str
    controller_counter: int | None = Field(
        description="the controller's own part counter as last read: a raw value (it may have been"
        " reset or have wrapped), not a count of parts"
    )


class IntervalOut(BaseModel):
    start: str
    end: str | None
    state: MachineState
    duration_s: float | None
    duration_hm: str | None = None  # duration_s as h:mm
    start_local: str | None = None  # start in the site's local time
    end_local: str | None = None
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
    timezone: str
    range: Range = Field(description="the window in UTC and local time, and what was filled in")
    intervals: list[IntervalOut]


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def check_window(start: datetime, end: datetime, max_days: int) -> tuple[int, int]:
    """A query's window in UTC ms; 422 when it is backwards or too long (with defaults:
    services/api/when.py `resolve`)."""
    if end <= start:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "end must be after start", ["query", "end"])
    if end - start > timedelta(days=max_days):
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"window is longer than {max_days} days",
            ["query", "start"],
        )
    return _ms(start), _ms(end)


@router.get(
    "",
    response_model=list[MachineOut],
    summary="Every machine's current state, since when, and the parts it made this shift",
)
def list_machines(request: Request, store: Store, calendar: Calendar) -> list[MachineOut]:
    states = store.current_states()
    zone = site_zone(request)
    now_ms = max([request.app.state.clock(), *(c.updated_ms or 0 for c in states)])
    shift = calendar.shift_at(now_ms) if calendar is not None else None
    since_ms = shift.start_ms if shift is not None else midnight(local_date(now_ms, zone), zone)
    made = store.made_by_machine([c.machine_id for c in states], since_ms, now_ms + 1)
    return [
        MachineOut(
            id=c.machine_id,
            name=c.name,
            path=c.path,
            state=c.state,
            since=iso(c.since_ms) if c.since_ms is not None else None,
            since_local=local_or_none(c.since_ms, zone),
            updated=iso(c.updated_ms) if c.updated_ms is not None else None,
            updated_local=local_or_none(c.updated_ms, zone),
            shift=shift.key if shift is not None else None,
            parts_made=made[c.machine_id][0],
            parts_good=max(made[c.machine_id][0] - made[c.machine_id][1], 0),
            parts_since=iso(since_ms),
            parts_since_local=local(since_ms, zone),
            controller_counter=c.counter,
        )
        for c in states
    ]


@router.get(
    "/{machine_id}/intervals",
    response_model=IntervalsOut,
    summary="State intervals in a time window",
    responses=responses(404, 422),
)
def machine_intervals(
    request: Request,
    machine_id: str,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    start: Annotated[
        When | None,
        Query(
            description="window start, ISO-8601 with offset; default: the current shift's start (the"
            " current production day's, between shifts or without a shift calendar)",
            examples=["2026-11-18T14:00:00-05:00"],
        ),
    ] = None,
    end: Annotated[
        When | None,
        Query(description="window end; default: now", examples=["2026-11-18T22:00:00-05:00"]),
    ] = None,
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
    w = resolve(request, store, settings.max_interval_days, calendar, start, end, prefer=CURRENT_SHIFT)
    start_ms, end_ms, zone = w.start_ms, w.end_ms, w.zone
    out: list[IntervalOut] = []
    for i in store.intervals(machine_id, start_ms, end_ms):
        pieces = calendar.split(i.start_ms, i.end_ms) if calendar else [(i.start_ms, i.end_ms, None)]
        out += [
            IntervalOut(
                start=iso(a),
                end=iso(b),
                state=i.state,
                duration_s=(b - a) / 1000,
                duration_hm=hm((b - a) / 1000),
                start_local=local(a, zone),
                end_local=local(b, zone),
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
                start_local=local(current.since_ms, zone),
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
    return IntervalsOut(
        machine=machine_id,
        start=iso(start_ms),
        end=iso(end_ms),
        timezone=zone,
        range=w.range(),
        intervals=out,
    )
