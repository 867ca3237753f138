"""`/api/v1/counts`: parts made, good, scrap and rework by machine, shift, job and operation."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.api.deps import Settings, Store
from services.api.errors import responses
from services.api.machines import check_window
from services.api.when import When
from uns.clock import iso

router = APIRouter(prefix="/api/v1/counts", tags=["counts"])


class CountRow(BaseModel):
    machine: str
    shift: str | None
    job: str | None
    operation: str | None
    made: int  # from the machine's counter (resets and rollovers handled)
    scrap: int  # reported by operators, the QMS or inspection
    rework: int
    good: int  # made - scrap - rework (never below 0)


class CountsOut(BaseModel):
    start: str
    end: str
    rows: list[CountRow]


@router.get(
    "",
    response_model=CountsOut,
    summary="Part counts by machine, shift, job and operation",
    responses=responses(422),
)
def counts(
    store: Store,
    settings: Settings,
    start: Annotated[When, Query(description="window start, ISO-8601 with offset")],
    end: Annotated[When, Query(description="window end, ISO-8601 with offset")],
) -> CountsOut:
    """Counts by when the part was made (or reported), in [start, end)."""
    start_ms, end_ms = check_window(start, end, settings.max_interval_days)
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
    return CountsOut(start=iso(start_ms), end=iso(end_ms), rows=rows)
