"""`/api/v1/counts`: parts made, good, scrap and rework by machine, shift, job and operation."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.api.deps import Calendar, Settings, Store
from services.api.errors import responses
from services.api.oee import END, START
from services.api.when import Range, When, resolve
from uns.clock import iso

router = APIRouter(prefix="/api/v1/counts", tags=["counts"])


class CountRow(BaseModel):
    machine: str
    shift: str | None
    job: str | None
    operation: str | None
    made: int = Field(
        description="parts made: the increments of the machine's counter (resets and rollovers"
        " handled), not the counter's value"
    )
    scrap: int = Field(description="reported by operators, the QMS or inspection")
    rework: int
    good: int = Field(description="made - scrap - rework (never below 0)")


class CountsOut(BaseModel):
    start: str
    end: str
    timezone: str = Field(examples=["America/New_York"])
    range: Range = Field(description="the window in UTC and local time, and what was filled in")
    rows: list[CountRow]


@router.get(
    "",
    response_model=CountsOut,
    summary="Part counts by machine, shift, job and operation",
    responses=responses(422),
)
def counts(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    start: Annotated[When | None, START] = None,
    end: Annotated[When | None, END] = None,
) -> CountsOut:
    """Counts by when the part was made (or reported), in [start, end); without them the current
    shift (or production day) up to now (`range` says which)."""
    w = resolve(request, store, settings.max_interval_days, calendar, start, end)
    start_ms, end_ms = w.start_ms, w.end_ms
    totals: dict[tuple[str, str | None, str | None, str | None], dict[str, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    for machine, shift, job, operation, kind, quantity in store.counts(start_ms, end_ms):
        totals[(machine, shift, job, operation)][kind] += quantity
    rows = [
        CountRow(
            machine=m,
            shift=s,
            job=j,
            operation=o,
            made=t["made"],
            scrap=t["scrap"],
            rework=t["rework"],
            good=max(t["made"] - t["scrap"] - t["rework"], 0),
        )
        for (m, s, j, o), t in sorted(totals.items(), key=lambda kv: tuple(x or "" for x in kv[0]))
    ]
    return CountsOut(start=iso(start_ms), end=iso(end_ms), timezone=w.zone, range=w.range(), rows=rows)
