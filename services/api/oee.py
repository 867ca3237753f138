"""`/api/v1/oee`: availability, performance, quality and OEE from the record, grouped (docs/oee.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field

from services.api.coalesce import shared
from services.api.deps import Calendar, OeeDefinition, Settings, Store
from services.api.errors import ApiError, responses
from services.api.settings import ApiSettings
from services.api.when import Range, When, Window, hm, resolve, sent
from services.context.record import RecordReader
from services.context.shifts import ShiftCalendar
from services.oee.engine import NONE, Definition, Tally
from services.oee.observed import ObservedCycles
from services.oee.report import oee
from uns.clock import iso

router = APIRouter(prefix="/api/v1/oee", tags=["oee"])

Group = Literal["machine", "shift", "day", "job", "operation", "cell", "line", "area", "site"]
START = Query(
    description="window start, ISO-8601 with offset; default: the current shift's start (the current"
    " production day's, between shifts or without a shift calendar)",
    examples=["2026-11-18T14:00:00-05:00"],
)
END = Query(description="window end; default: now", examples=["2026-11-18T22:00:00-05:00"])


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
    planned_hm: str = Field(description="planned_s as h:mm", examples=["7:30"])
    run_s: float = Field(description="planned production time less availability losses")
    run_hm: str = Field(description="run_s as h:mm", examples=["6:12"])
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
    range: Range = Field(description="the window in UTC and local time, and what was filled in")
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
        planned_hm=hm(t.planned_s),
        run_s=round(t.run_s, 3),
        run_hm=hm(t.run_s),
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


def observed_cycles(request: Request, store: RecordReader) -> ObservedCycles:
    """The operations' observed cycles, kept by the app between requests (a wall display asks every
    minute; they are read again where the record changed)."""
    kept: ObservedCycles | None = getattr(request.app.state, "oee_cycles", None)
    if kept is None or kept.store is not store:
        kept = request.app.state.oee_cycles = ObservedCycles(store)
    return kept


def window(
    request: Request,
    store: RecordReader,
    settings: ApiSettings,
    calendar: ShiftCalendar | None,
    start: datetime | None,
    end: datetime | None,
    machine: list[str] | None,
) -> Window:
    """A report's window (services/api/when.py: by default the current shift, else the current
    production day, up to now); 404 for unknown machines, 422 for a bad window."""
    known_machines(store, machine)
    return resolve(request, store, settings.max_interval_days, calendar, start, end)


def head(w: Window, definition: Definition, by: tuple[str, ...]) -> dict[str, Any]:
    """What an OEE report (and the losses) says of itself: its window, the definition, the grouping."""
    return {
        "start": iso(w.start_ms),
        "end": iso(w.end_ms),
        "timezone": w.zone,
        "range": w.range(),
        "definition_version": definition.version,
        "group_by": list(by),
    }


def known_machines(store: RecordReader, machine: list[str] | None) -> list[str]:
    """The machines asked for (all, without `machine=`); 404 naming `machine` for unknown ones."""
    known = [c.machine_id for c in store.current_states()]
    unknown = sorted(set(machine or []) - set(known))
    if unknown:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machines {unknown} in the site model", ["query", "machine"]
        )
    return list(dict.fromkeys(machine)) if machine else sorted(known)


@router.get(
    "",
    response_model=OeeOut,
    summary="OEE by machine, shift, day, job, operation, cell, line, area",
    responses=responses(404, 422),
)
@shared
def get_oee(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    definition: OeeDefinition,
    start: Annotated[When | None, START] = None,
    end: Annotated[When | None, END] = None,
    group_by: Annotated[
        list[Group] | None, Query(description="group by these (repeatable); default: machine")
    ] = None,
    machine: Annotated[list[str] | None, Query(description="only these machines (repeatable)")] = None,
) -> Response:
    """Closed record intervals and the open one, clipped to the window and cut at shift boundaries;
    parts made, scrap and rework reported in it. Rows and the total are summed from times and counts."""
    w = window(request, store, settings, calendar, start, end, machine)
    start_ms, end_ms, now_ms = w.start_ms, w.end_ms, w.now_ms
    by = tuple(dict.fromkeys(group_by or ["machine"]))
    zone = w.zone
    cycles = observed_cycles(request, store)
    tallies = oee(store, calendar, definition, start_ms, end_ms, by, machine, zone, now_ms, cycles=cycles)
    rows = [_row(group, t) for group, t in ordered(tallies)]
    total = sum(tallies.values(), Tally())
    return sent(OeeOut(**head(w, definition, by), rows=rows, total=_row({}, total)))
