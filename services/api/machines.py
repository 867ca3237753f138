"""`/api/v1/machines`: each machine's current state, and its state intervals over a window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel

from services.api.deps import Settings, Store
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


class IntervalsOut(BaseModel):
    machine: str
    start: str
    end: str
    intervals: list[IntervalOut]


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


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
    "/{machine_id}/intervals", response_model=IntervalsOut, summary="State intervals in a time window"
)
def machine_intervals(
    machine_id: str,
    store: Store,
    settings: Settings,
    start: Annotated[AwareDatetime, Query(description="window start, ISO-8601 with offset")],
    end: Annotated[AwareDatetime, Query(description="window end, ISO-8601 with offset")],
) -> IntervalsOut:
    """Intervals overlapping [start, end), in time order and not clipped; the current one has no end."""
    current = store.current_state(machine_id)
    if current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no machine {machine_id!r} in the site model")
    if end <= start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "end must be after start")
    if end - start > timedelta(days=settings.max_interval_days):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"window is longer than {settings.max_interval_days} days"
        )
    start_ms, end_ms = _ms(start), _ms(end)
    out = [
        IntervalOut(
            start=iso(i.start_ms), end=iso(i.end_ms), state=i.state, duration_s=(i.end_ms - i.start_ms) / 1000
        )
        for i in store.intervals(machine_id, start_ms, end_ms)
    ]
    if current.since_ms is not None and current.since_ms < end_ms:
        out.append(IntervalOut(start=iso(current.since_ms), end=None, state=current.state, duration_s=None))
    return IntervalsOut(machine=machine_id, start=iso(start_ms), end=iso(end_ms), intervals=out)
