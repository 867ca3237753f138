"""`/api/v1/downtime`: how long machines stood, and why, by shift (the morning review's question)."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from services.api.deps import Calendar, Reasons, Settings, Store
from services.api.errors import ApiError, responses
from services.api.machines import check_window
from services.api.when import When
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
    stops: int  # stops counted in this row: each in the row of its first piece in the window, once


class DowntimeOut(BaseModel):
    start: str
    end: str
    rows: list[DowntimeRow]


@router.get(
    "",
    response_model=DowntimeOut,
    summary="Stopped time by machine, shift and reason",
    responses=responses(404, 422),
)
def downtime(
    store: Store,
    settings: Settings,
    calendar: Calendar,
    taxonomy: Reasons,
    start: Annotated[When, Query(description="window start, ISO-8601 with offset")],
    end: Annotated[When, Query(description="window end, ISO-8601 with offset")],
    machine: Annotated[list[str] | None, Query(description="only these machines (repeatable)")] = None,
) -> DowntimeOut:
    """Closed intervals that were not running, clipped to the window, cut at shift boundaries, summed
    by machine, shift, state and reason. A stop (from the moment the machine stopped until it ran
    again, however many pieces shifts, breaks, operators and holds cut it into) counts once, in the
    row of its first piece in the window. Intervals still open are not counted yet."""
    start_ms, end_ms = check_window(start, end, settings.max_interval_days)
    known = {c.machine_id for c in store.current_states()}
    wanted = machine or sorted(known)
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machines {unknown} in the site model", ["query", "machine"]
        )
    totals: dict[tuple[str, str | None, MachineState, str | None], list[float]] = defaultdict(
        lambda: [0.0, 0]
    )
    for machine_id in wanted:
        counted: set[int] = set()  # a stop is counted once, in the row of its first piece in the window
        for i in store.intervals(machine_id, start_ms, end_ms):
            if i.state is MachineState.RUNNING:
                continue
            stop = i.stop_start_ms if i.stop_start_ms is not None else i.run_start_ms or i.start_ms
            a, b = max(i.start_ms, start_ms), min(i.end_ms, end_ms)
            pieces = calendar.split(a, b) if calendar else [(a, b, None)]
            for p_start, p_end, shift in pieces:
                total = totals[(machine_id, shift.key if shift else None, i.state, i.reason)]
                total[0] += (p_end - p_start) / 1000
                if stop not in counted:
                    counted.add(stop)
                    total[1] += 1
    rows = [
        DowntimeRow(
            machine=m,
            shift=shift,
            state=state,
            reason=reason,
            planned=bool(reason and reason in taxonomy and taxonomy[reason].planned),
            duration_s=round(total[0], 3),
            stops=int(total[1]),
        )
        for (m, shift, state, reason), total in sorted(
            totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        )
    ]
    return DowntimeOut(start=iso(start_ms), end=iso(end_ms), rows=rows)
