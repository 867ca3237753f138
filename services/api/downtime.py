"""`/api/v1/downtime`: how long machines stood, and why, by shift (the morning review's question)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from services.api.coalesce import shared
from services.api.deps import Calendar, Reasons, Settings, Store
from services.api.errors import responses
from services.api.oee import END, START, known_machines
from services.api.when import Range, When, hm, resolve, sent_as
from services.context.state import MachineState
from uns.clock import iso

router = APIRouter(prefix="/api/v1/downtime", tags=["downtime"])


class DowntimeRow(BaseModel):
    machine: str
    shift: str | None  # "<production date>/<shift name>"; None: outside every shift
    state: MachineState
    reason: str | None
    planned: bool
    duration_s: float
    duration_hm: str = Field(description="duration_s as h:mm", examples=["0:40"])
    stops: int  # stops counted in this row: each in the row of its first piece in the window, once


class DowntimeOut(BaseModel):
    start: str
    end: str
    timezone: str = Field(examples=["America/New_York"])
    range: Range = Field(description="the window in UTC and local time, and what was filled in")
    rows: list[DowntimeRow]


@router.get(
    "",
    response_model=DowntimeOut,
    summary="Stopped time by machine, shift and reason",
    responses=responses(404, 422),
)
@shared
def downtime(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    taxonomy: Reasons,
    start: Annotated[When | None, START] = None,
    end: Annotated[When | None, END] = None,
    machine: Annotated[list[str] | None, Query(description="only these machines (repeatable)")] = None,
) -> Response:
    """Closed intervals that were not running, clipped to the window, cut at shift boundaries, summed
    by machine, shift, state and reason. A stop (from the moment the machine stopped until it ran
    again, however many pieces shifts, breaks, operators and holds cut it into) counts once, in the
    row of its first piece in the window. Intervals still open are not counted yet. Without
    `start` and `end`: the current shift (or production day) up to now (`range` says which)."""
    wanted = known_machines(store, machine)
    w = resolve(request, store, settings.max_interval_days, calendar, start, end)
    start_ms, end_ms = w.start_ms, w.end_ms
    # [ms, stops, first piece's start] by (machine, shift, state, reason); the record names each
    # piece's shift (as OEE reads it): only a record written without a calendar is cut here
    totals: dict[tuple[str, str | None, str, str | None], list[int]] = {}
    summed, uncut = store.stopped_by_shift(wanted, start_ms, end_ms)
    for m, shift_key, state, reason, ms, stops, first in summed:
        total = totals.setdefault((m, shift_key, state, reason), [0, 0, first])
        total[0] += ms
        total[1] += stops
        total[2] = min(total[2], first)
    for m, a, b, state, reason, stop in uncut:
        counted_at = max(stop, start_ms)  # a stop counts in the piece holding its start
        clipped = (max(a, start_ms), min(b, end_ms))
        for p_start, p_end, shift in calendar.split(*clipped) if calendar else [(*clipped, None)]:
            key = (m, shift.key if shift else None, state, reason)
            total = totals.setdefault(key, [0, 0, p_start])
            total[0] += p_end - p_start
            total[1] += int(p_start <= counted_at < p_end)
            total[2] = min(total[2], p_start)
    planned = {r for r in taxonomy if taxonomy[r].planned}
    rows = [  # DowntimeRow's fields, from the record's own values: no need to check them (`sent_as`)
        {
            "machine": m,
            "shift": shift,
            "state": state,
            "reason": reason,
            "planned": reason in planned,
            "duration_s": round(total[0] / 1000, 3),
            "duration_hm": hm(total[0] / 1000),
            "stops": total[1],
        }
        for (m, shift, state, reason), total in sorted(
            totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[1][2])
        )
    ]
    head = DowntimeOut(start=iso(start_ms), end=iso(end_ms), timezone=w.zone, range=w.range(), rows=[])
    return sent_as(head, rows=rows)
