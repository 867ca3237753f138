"""`/api/v1/oee`: availability, performance, quality and OEE from the record, grouped (docs/oee.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from services.api.deps import Calendar, OeeDefinition, Settings, Store
from services.api.errors import ApiError, responses
from services.api.settings import ApiSettings
from services.api.when import When
from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar
from services.oee.engine import NONE, Tally
from services.oee.observed import ObservedCycles
from services.oee.report import oee
from uns.clock import iso

router = APIRouter(prefix="/api/v1/oee", tags=["oee"])

Group = Literal["machine", "shift", "day", "job", "operation", "cell", "line", "area", "site"]
DEFAULT_HOURS = 8  # without a shift calendar: the last eight hours


class IdealCycleOut(BaseModel):
    operation: str = Field(description="job/operation (`no operation`: parts counted with none running)")
    source: str = Field(description="dispatch, part_master, best_observed, or none")
    parts: int
    ideal_cycle_s: float | None = Field(description="the ideal cycle time these parts were held to")
    note: str | None = Field(
        description="the part number, how a best observed cycle was found, or why there is no ideal",
        examples=[
            "10th percentile of 37 cycles of part P-4711 operation 10 on vf2-01 since 2026-10-19: 88.2 s"
        ],
    )


class OeeRow(BaseModel):
    group: dict[str, str | None] = Field(examples=[{"machine": "vf2-01", "shift": "2026-11-18/second"}])
    planned_s: float = Field(description="planned production time: in shifts, less planned stops")
    run_s: float = Field(description="planned production time less availability losses")
    planned_stop_s: float
    availability_loss_s: float
    performance_stop_s: float = Field(description="micro-stops: inside run time, a performance loss")
    unknown_s: float = Field(description="comms_loss in shifts: not known, not counted")
    made: int
    good: int
    rejected: int
    startup_rejected: int = Field(description="of rejected: an operation's first parts (docs/oee.md)")
    ideal_s: float = Field(description="ideal cycle time x the parts made")
    ideal_sources: dict[str, int] = Field(
        description="parts by where their ideal cycle time came from (none: it has none)",
        examples=[{"dispatch": 412, "part_master": 0, "best_observed": 37, "none": 0}],
    )
    ideal_cycles: list[IdealCycleOut] = Field(description="by operation and source, most parts first")
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    performance_above_100: bool = Field(description="more parts than the ideal cycle allows: it is wrong")
    performance_missing: str | None = Field(description="why performance (and OEE) is not given")


class OeeOut(BaseModel):
    start: str
    end: str
    timezone: str
    definition_version: str = Field(description="the site model's `oee.version` that produced these")
    group_by: list[str]
    rows: list[OeeRow]
    total: OeeRow = Field(description="all rows together (times and counts summed, not percentages averaged)")


def _row(group: dict[str, str | None], t: Tally) -> OeeRow:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return OeeRow(
        group=group,
        planned_s=round(t.planned_s, 3),
        run_s=round(t.run_s, 3),
        planned_stop_s=round(t.planned_stop_s, 3),
        availability_loss_s=round(t.availability_loss_s, 3),
        performance_stop_s=round(t.performance_stop_s, 3),
        unknown_s=round(t.unknown_s, 3),
        made=t.made,
        good=t.good,
        rejected=t.rejected,
        startup_rejected=t.startup_rejected,
        ideal_s=round(t.ideal_s, 3),
        ideal_sources=t.ideal_sources,
        ideal_cycles=[
            IdealCycleOut(
                operation=what,
                source=source,
                parts=parts,
                ideal_cycle_s=round(ideal_s / parts, 3) if source != NONE and parts else None,
                note=note,
            )
            for (what, source), (parts, ideal_s, note) in sorted(
                (t.ideals or {}).items(), key=lambda kv: (-kv[1][0], kv[0])
            )
        ],
        availability=r(t.availability),
        performance=r(t.performance),
        quality=r(t.quality),
        oee=r(t.oee),
        performance_above_100=t.performance_above_100,
        performance_missing=t.performance_missing,
    )


def ordered(
    tallies: dict[tuple[tuple[str, str | None], ...], Tally],
) -> list[tuple[dict[str, str | None], Tally]]:
    """A report's groups in the order of their keys, each as a dict (group name -> value)."""
    return [(dict(k), t) for k, t in sorted(tallies.items(), key=lambda kv: [v or "" for _, v in kv[0]])]


def observed_cycles(request: Request, store: RecordStore) -> ObservedCycles:
    """The operations' observed cycles, kept by the app between requests (a wall display asks every
    minute; they are read again where the record changed)."""
    kept: ObservedCycles | None = getattr(request.app.state, "oee_cycles", None)
    if kept is None or kept.store is not store:
        kept = request.app.state.oee_cycles = ObservedCycles(store)
    return kept


def window(
    request: Request,
    store: RecordStore,
    settings: ApiSettings,
    calendar: ShiftCalendar | None,
    start: datetime | None,
    end: datetime | None,
    machine: list[str] | None,
) -> tuple[int, int, int]:
    """A report's window in UTC ms, and now: by default the current shift (between shifts the last
    one, without a calendar the last 8 h) up to now; 404 for unknown machines, 422 for a bad window."""
    states = store.current_states()
    unknown = sorted(set(machine or []) - {c.machine_id for c in states})
    if unknown:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machines {unknown} in the site model", ["query", "machine"]
        )
    latest = max((c.updated_ms or 0 for c in states), default=0)
    now_ms = max(request.app.state.clock(), latest)  # a standing machine stands until now
    end_ms = int(end.timestamp() * 1000) if end is not None else now_ms
    if start is not None:
        start_ms = int(start.timestamp() * 1000)
    else:  # the current shift, or the last one that ended; without a calendar the last 8 h
        shifts = calendar.shifts(end_ms - 86_400_000, end_ms) if calendar is not None else []
        began = [s.start_ms for s in shifts if s.start_ms < end_ms]
        start_ms = max(began) if began else end_ms - DEFAULT_HOURS * 3_600_000
    if end_ms <= start_ms:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "end must be after start", ["query", "end"])
    if end_ms - start_ms > settings.max_interval_days * 86_400_000:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"window is longer than {settings.max_interval_days} days",
            ["query", "start"],
        )
    return start_ms, end_ms, now_ms


@router.get(
    "",
    response_model=OeeOut,
    summary="OEE by machine, shift, day, job, operation, cell, line, area",
    responses=responses(404, 422),
)
def get_oee(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    definition: OeeDefinition,
    start: Annotated[
        When | None,
        Query(description="window start, ISO-8601 with offset; default: the current shift's start"),
    ] = None,
    end: Annotated[
        When | None,
        Query(description="window end; default: the record's latest event time (now)"),
    ] = None,
    group_by: Annotated[
        list[Group] | None, Query(description="group by these (repeatable); default: machine")
    ] = None,
    machine: Annotated[list[str] | None, Query(description="only these machines (repeatable)")] = None,
) -> OeeOut:
    """Closed record intervals and the open one, clipped to the window and cut at shift boundaries;
    parts made, scrap and rework reported in it. Rows and the total are summed from times and counts."""
    start_ms, end_ms, now_ms = window(request, store, settings, calendar, start, end, machine)
    by = tuple(dict.fromkeys(group_by or ["machine"]))
    zone: str = request.app.state.timezone
    cycles = observed_cycles(request, store)
    tallies = oee(store, calendar, definition, start_ms, end_ms, by, machine, zone, now_ms, cycles=cycles)
    rows = [_row(group, t) for group, t in ordered(tallies)]
    total = sum(tallies.values(), Tally())
    return OeeOut(
        start=iso(start_ms),
        end=iso(end_ms),
        timezone=zone,
        definition_version=definition.version,
        group_by=list(by),
        rows=rows,
        total=_row({}, total),
    )
