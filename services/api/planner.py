"""`/api/v1/planner`: the planner's and the ERP's view (docs/planner-api.md). Per job and operation,
planned against actual with the variance, the remaining time estimated from the cycles the machine
showed, and the at-risk, late and short flags; machine utilisation by shift. Every answer has a
default range (the current production day) and gives times in UTC and in the site's local time.

The estimate (`estimates`, also the morning review's "at risk today"): an operation's remaining
parts (quantity less good) times its typical cycle: the median of the cycles it showed (the running
time between two of its part counts, per part: services/oee/cycles.py), else of the cycles of the
same part number and operation on the same machine, else the dispatch list's ideal cycle, else the
site model's part master. A machine works its operations one after another: the one running from
now, the queued ones in their order from the end of the one before (or their planned start, if
later). A cycle is cutting time, so the projected end is the earliest the work can end without a
stop: an operation at risk by it cannot make its planned end even running without one.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field

from services.api.coalesce import shared
from services.api.deps import Calendar, OeeDefinition, Settings, Store
from services.api.errors import ApiError, responses
from services.api.oee import known_machines, observed_cycles
from services.api.when import (
    PRODUCTION_DAY,
    Range,
    When,
    hm,
    hm_or_none,
    local,
    local_or_none,
    resolve,
    sent,
    sent_as,
)
from services.context.jobs import ACTIVE, CANCELLED, COMPLETE, PAUSED, PLANNED, Operation
from services.context.record import CurrentState, RecordReader
from services.oee.engine import Definition, Tally
from services.oee.observed import ObservedCycles, Op, OpenPiece
from services.oee.report import oee
from uns.clock import iso

router = APIRouter(prefix="/api/v1/planner", tags=["planner"])

OBSERVED_MIN = 3  # cycles of its own before an operation's estimate is its own
DAY_MS = 86_400_000
CycleSource = Literal["observed", "observed_part", "dispatch", "part_master"]
OPEN = (PLANNED, ACTIVE, PAUSED)

START = Query(
    description="window start, ISO-8601 with offset; default: the current production day's start",
    examples=["2026-11-18T00:00:00-05:00"],
)
END = Query(description="window end; default: now", examples=["2026-11-18T22:00:00-05:00"])
MACHINE = Query(description="only these machines (repeatable)", examples=[["vf2-01"]])


# -- the estimate (pure, over what the record gave) ----------------------------------------------
@dataclass(frozen=True, slots=True)
class Estimate:
    """An operation with its remaining work and when it can end."""

    op: Operation
    cycle_ms: float | None  # the typical cycle its estimate uses (None: nothing to go by)
    cycle_source: CycleSource | None
    cycles: int  # cycles observed of it (or of its part number, with `observed_part`)
    remaining: int  # parts still to make (quantity less good; 0 once complete)
    remaining_ms: float | None
    projected_end_ms: int | None  # open operations: the earliest end without stops

    @property
    def end_ms(self) -> int | None:
        """Its end: the actual end, else the projected one."""
        return self.op.actual_end_ms if self.op.actual_end_ms is not None else self.projected_end_ms

    @property
    def late(self) -> bool:
        """Completed after its planned end."""
        o = self.op
        return (
            o.status == COMPLETE
            and o.actual_end_ms is not None
            and o.planned_end_ms is not None
            and o.actual_end_ms > o.planned_end_ms
        )

    @property
    def short(self) -> bool:
        """Completed with fewer good parts than its quantity."""
        return self.op.status == COMPLETE and self.op.good < self.op.quantity

    def at_risk(self, now_ms: int) -> bool | None:
        """Open and past its planned end already, or projected to end after it; None: open with a
        planned end but nothing to estimate from (and not overdue yet); False: done, cancelled, on
        time, or without a planned end."""
        o = self.op
        if o.status not in OPEN or o.planned_end_ms is None:
            return False
        if now_ms > o.planned_end_ms:
            return True
        if self.projected_end_ms is None:
            return None
        return self.projected_end_ms > o.planned_end_ms


def typical(cycles: Iterable[float]) -> tuple[float | None, int]:
    """The median cycle (ms) of those not shorter than half the median (a double count is no
    cycle: services/oee/cycles.py), and how many were used."""
    ordered = sorted(c for c in cycles if c > 0)
    if not ordered:
        return None, 0
    half = statistics.median(ordered) / 2
    kept = [c for c in ordered if c >= half]
    return statistics.median(kept), len(kept)


def open_pieces(states: Iterable[CurrentState], now_ms: int) -> dict[str, OpenPiece]:
    """Each machine's open interval up to now, for the cycles that end in it."""
    return {
        c.machine_id: OpenPiece(
            c.state,
            c.since_ms,
            max(now_ms, c.updated_ms or 0),
            (c.piece["job"], c.piece["operation"]) if c.piece and c.piece.get("job") else None,
        )
        for c in states
        if c.since_ms is not None
    }


def estimates(
    store: RecordReader,
    definition: Definition,
    cycles: ObservedCycles,
    ops: list[Operation],
    now_ms: int,
    states: list[CurrentState] | None = None,
    every: list[Operation] | None = None,
) -> dict[tuple[str, str], Estimate]:
    """The estimate of each operation (job, operation) of `ops`; queued operations are projected
    after the open ones before them on their machine (all of the machine's open operations are
    read for that, also those not in `ops`; `every`: they, if already read)."""
    if not ops:
        return {}
    states = states if states is not None else store.current_states()
    machines = {o.machine_id for o in ops}
    if every is None:  # the open operations of the machines (their queues), and `ops`
        every = store.report_operations(sorted(machines), now_ms, now_ms + 1)
    every = [o for o in every if o.machine_id in machines]
    by_key = {o.key: o for o in every} | {o.key: o for o in ops}
    open_ops = [o for o in by_key.values() if o.status in OPEN]
    # the cycles of each open operation, and of the operations of the same part number on its machine
    same_part: dict[tuple[str, str, str], list[Op]] = {}
    for o in every:
        if o.part_number:
            same_part.setdefault((o.machine_id, o.part_number, o.operation), []).append(
                (o.machine_id, o.job, o.operation)
            )
    wanted: list[Op] = []
    for o in open_ops:
        wanted.append((o.machine_id, o.job, o.operation))
        if o.part_number:
            wanted += same_part.get((o.machine_id, o.part_number, o.operation), [])
    seen = cycles.cycles(wanted, open_pieces(states, now_ms)) if wanted else {}
    since = now_ms - round(max(definition.best_observed_days, 1) * DAY_MS)

    def cycle_of(o: Operation) -> tuple[float | None, CycleSource | None, int]:
        own, n = typical(ms for _, ms in seen.get((o.machine_id, o.job, o.operation), ()))
        if own is not None and n >= OBSERVED_MIN:
            return own, "observed", n
        if o.part_number:
            group = same_part.get((o.machine_id, o.part_number, o.operation), [])
            part, n = typical(ms for op in group for ts, ms in seen.get(op, ()) if ts >= since)
            if part is not None and n >= OBSERVED_MIN:
                return part, "observed_part", n
        if o.ideal_cycle_ms:
            return float(o.ideal_cycle_ms), "dispatch", 0
        if o.part_number in definition.part_cycles_ms:
            return float(definition.part_cycles_ms[o.part_number]), "part_master", 0
        return None, None, 0

    out: dict[tuple[str, str], Estimate] = {}
    queues: dict[str, list[Operation]] = {}
    for o in by_key.values():
        if o.status in OPEN:
            queues.setdefault(o.machine_id, []).append(o)
        else:
            out[o.key] = Estimate(o, None, None, 0, 0, 0.0, None)
    for queue in queues.values():
        # the running (or paused) operation first, then the queue in its order
        queue.sort(
            key=lambda o: (o.status == PLANNED, o.sequence, o.planned_start_ms or 0, o.job, o.operation)
        )
        cursor: float | None = now_ms
        for o in queue:
            cycle, source, n = cycle_of(o)
            remaining = max(o.quantity - o.good, 0)
            remaining_ms = None if cycle is None else remaining * cycle
            start = cursor
            if start is not None and o.status == PLANNED and o.planned_start_ms is not None:
                start = max(start, o.planned_start_ms)
            end = None if start is None or remaining_ms is None else start + remaining_ms
            out[o.key] = Estimate(
                o, cycle, source, n, remaining, remaining_ms, None if end is None else round(end)
            )
            cursor = end
    return {o.key: out[o.key] for o in ops}


# -- GET /api/v1/planner/jobs ---------------------------------------------------------------------
class OperationPlan(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "job": "24173",
                    "operation": "20",
                    "machine": "vf2-01",
                    "part_number": "P-4711",
                    "status": "active",
                    "quantity": 40,
                    "made": 25,
                    "good": 24,
                    "scrap": 1,
                    "rework": 0,
                    "quantity_variance": -16,
                    "planned_start": "2026-11-18T19:00:00.000Z",
                    "planned_start_local": "2026-11-18T14:00:00-05:00",
                    "planned_end": "2026-11-19T01:00:00.000Z",
                    "planned_end_local": "2026-11-18T20:00:00-05:00",
                    "planned_s": 21600.0,
                    "planned_hm": "6:00",
                    "actual_start": "2026-11-18T19:20:00.000Z",
                    "actual_start_local": "2026-11-18T14:20:00-05:00",
                    "actual_end": None,
                    "actual_end_local": None,
                    "actual_s": 14400.0,
                    "actual_hm": "4:00",
                    "start_variance_s": 1200.0,
                    "start_variance_hm": "0:20",
                    "end_variance_s": 2520.0,
                    "end_variance_hm": "0:42",
                    "remaining": 16,
                    "cycle_s": 540.0,
                    "cycle_source": "observed",
                    "cycles_observed": 23,
                    "remaining_s": 8640.0,
                    "remaining_hm": "2:24",
                    "projected_end": "2026-11-19T01:42:00.000Z",
                    "projected_end_local": "2026-11-18T20:42:00-05:00",
                    "at_risk": True,
                    "late": False,
                    "short": False,
                }
            ]
        }
    }

    job: str
    operation: str
    machine: str
    part_number: str
    status: str = Field(description="planned, active, paused, complete or cancelled")
    quantity: int = Field(description="planned quantity")
    made: int = Field(description="parts made (the counter's increments, not its value)")
    good: int = Field(description="made less scrap and rework")
    scrap: int
    rework: int
    quantity_variance: int = Field(description="good - quantity (below 0: short of the quantity so far)")
    planned_start: str | None
    planned_start_local: str | None
    planned_end: str | None
    planned_end_local: str | None
    planned_s: float | None = Field(description="planned end - planned start")
    planned_hm: str | None
    actual_start: str | None
    actual_start_local: str | None
    actual_end: str | None
    actual_end_local: str | None
    actual_s: float | None = Field(description="actual end (or now, while open) - actual start")
    actual_hm: str | None
    start_variance_s: float | None = Field(description="actual start - planned start (above 0: started late)")
    start_variance_hm: str | None
    end_variance_s: float | None = Field(
        description="actual end (open: projected end) - planned end (above 0: late)"
    )
    end_variance_hm: str | None
    remaining: int = Field(description="parts still to make: quantity - good (0 once complete)")
    cycle_s: float | None = Field(description="the typical cycle the estimate uses (cutting time a part)")
    cycle_source: CycleSource | None = Field(
        description="observed (its own cycles' median), observed_part (the same part number and operation"
        " on the machine), dispatch (the list's ideal cycle), part_master; None: nothing to go by"
    )
    cycles_observed: int
    remaining_s: float | None = Field(description="remaining x cycle_s: running time still needed")
    remaining_hm: str | None
    projected_end: str | None = Field(
        description="open operations: the earliest end without stops, after the machine's work before it"
    )
    projected_end_local: str | None
    at_risk: bool | None = Field(
        description="open, and past its planned end or projected after it; None: no estimate yet"
    )
    late: bool = Field(description="completed after its planned end")
    short: bool = Field(description="completed with fewer good parts than its quantity")


class JobPlan(BaseModel):
    job: str
    operations: list[OperationPlan]
    planned_end: str | None = Field(description="the latest planned end of its operations")
    planned_end_local: str | None
    end: str | None = Field(description="when its last operation ended, or is projected to")
    end_local: str | None
    at_risk: bool = Field(description="any of its operations is at risk")
    late: bool
    short: bool


class PlannerJobsOut(BaseModel):
    range: Range
    as_of: str = Field(description="now, which the estimates start from")
    as_of_local: str
    timezone: str
    jobs: list[JobPlan]


def operation_plan(e: Estimate, now_ms: int, zone: str) -> OperationPlan:
    o = e.op

    def between(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else (b - a) / 1000

    actual_to = o.actual_end_ms if o.actual_end_ms is not None else (now_ms if o.status in OPEN else None)
    start_var = between(o.planned_start_ms, o.actual_start_ms)
    end_var = between(o.planned_end_ms, e.end_ms)
    return OperationPlan(
        job=o.job,
        operation=o.operation,
        machine=o.machine_id,
        part_number=o.part_number,
        status=o.status,
        quantity=o.quantity,
        made=o.made,
        good=o.good,
        scrap=o.scrap,
        rework=o.rework,
        quantity_variance=o.good - o.quantity,
        planned_start=_iso(o.planned_start_ms),
        planned_start_local=local_or_none(o.planned_start_ms, zone),
        planned_end=_iso(o.planned_end_ms),
        planned_end_local=local_or_none(o.planned_end_ms, zone),
        planned_s=between(o.planned_start_ms, o.planned_end_ms),
        planned_hm=hm_or_none(between(o.planned_start_ms, o.planned_end_ms)),
        actual_start=_iso(o.actual_start_ms),
        actual_start_local=local_or_none(o.actual_start_ms, zone),
        actual_end=_iso(o.actual_end_ms),
        actual_end_local=local_or_none(o.actual_end_ms, zone),
        actual_s=between(o.actual_start_ms, actual_to),
        actual_hm=hm_or_none(between(o.actual_start_ms, actual_to)),
        start_variance_s=start_var,
        start_variance_hm=hm_or_none(start_var),
        end_variance_s=end_var,
        end_variance_hm=hm_or_none(end_var),
        remaining=e.remaining if o.status in OPEN else 0,
        cycle_s=None if e.cycle_ms is None else round(e.cycle_ms / 1000, 3),
        cycle_source=e.cycle_source,
        cycles_observed=e.cycles,
        remaining_s=None if e.remaining_ms is None else round(e.remaining_ms / 1000, 3),
        remaining_hm=hm_or_none(None if e.remaining_ms is None else e.remaining_ms / 1000),
        projected_end=_iso(e.projected_end_ms),
        projected_end_local=local_or_none(e.projected_end_ms, zone),
        at_risk=e.at_risk(now_ms),
        late=e.late,
        short=e.short,
    )


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)


def _overlaps(o: Operation, start_ms: int, end_ms: int, now_ms: int) -> bool:
    """Open, or planned or worked in [start, end)."""
    if o.status in OPEN:
        return True
    spans = [(o.planned_start_ms, o.planned_end_ms), (o.actual_start_ms, o.actual_end_ms or now_ms)]
    return any(a is not None and b is not None and a < end_ms and b >= start_ms for a, b in spans)


@router.get(
    "/jobs",
    response_model=PlannerJobsOut,
    summary="Jobs and operations: planned against actual, remaining time, at risk, short",
    responses=responses(404, 422),
)
@shared
def planner_jobs(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    definition: OeeDefinition,
    start: Annotated[When | None, START] = None,
    end: Annotated[When | None, END] = None,
    machine: Annotated[list[str] | None, MACHINE] = None,
    job: Annotated[str | None, Query(description="only this job", examples=["24173"], max_length=64)] = None,
) -> Response:
    """Every operation still open (planned, active or paused), and those planned or worked in the
    window (default: the current production day up to now), by job. 404 names an unknown machine or job."""
    wanted = set(known_machines(store, machine))
    w = resolve(request, store, settings.max_interval_days, calendar, start, end, prefer=PRODUCTION_DAY)
    found = store.report_operations(sorted(wanted), w.start_ms, w.end_ms, job)
    if job is not None and not found and not store.operations(job=job):
        raise ApiError(status.HTTP_404_NOT_FOUND, f"no job {job!r} in the dispatch list", ["query", "job"])
    ops = [o for o in found if o.machine_id in wanted and _overlaps(o, w.start_ms, w.end_ms, w.now_ms)]
    every = found if job is None else None  # every open operation of the machines is in them
    est = estimates(store, definition, observed_cycles(request, store), ops, w.now_ms, every=every)
    by_job: dict[str, list[Estimate]] = {}
    for o in sorted(ops, key=lambda o: (o.job, o.operation)):
        by_job.setdefault(o.job, []).append(est[o.key])
    out = []
    for name, of_job in by_job.items():
        planned = [e.op.planned_end_ms for e in of_job if e.op.planned_end_ms is not None]
        ends = [e.end_ms for e in of_job if e.op.status != CANCELLED]
        last_planned = max(planned) if planned else None
        last = max(e for e in ends if e is not None) if ends and None not in ends else None
        plans = [operation_plan(e, w.now_ms, w.zone) for e in of_job]
        out.append(
            JobPlan(
                job=name,
                operations=plans,
                planned_end=_iso(last_planned),
                planned_end_local=local_or_none(last_planned, w.zone),
                end=_iso(last),
                end_local=local_or_none(last, w.zone),
                at_risk=any(p.at_risk for p in plans),
                late=any(p.late for p in plans),
                short=any(p.short for p in plans),
            )
        )
    return sent(
        PlannerJobsOut(
            range=w.range(),
            as_of=iso(w.now_ms),
            as_of_local=local(w.now_ms, w.zone),
            timezone=w.zone,
            jobs=out,
        )
    )


# -- GET /api/v1/planner/utilisation ----------------------------------------------------------------
class UtilisationRow(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "machine": "vf2-01",
                    "shift": "2026-11-18/second",
                    "start": "2026-11-18T19:00:00.000Z",
                    "start_local": "2026-11-18T14:00:00-05:00",
                    "end": "2026-11-19T03:00:00.000Z",
                    "end_local": "2026-11-18T22:00:00-05:00",
                    "available_s": 28800.0,
                    "available_hm": "8:00",
                    "recorded_s": 28800.0,
                    "planned_s": 27000.0,
                    "planned_hm": "7:30",
                    "running_s": 19440.0,
                    "running_hm": "5:24",
                    "utilisation": 0.675,
                    "of_planned": 0.72,
                }
            ]
        }
    }

    machine: str
    shift: str | None = Field(description="`<production date>/<name>`; None: outside every shift")
    start: str | None = Field(description="the shift's part in the window (UTC); None outside shifts")
    start_local: str | None
    end: str | None
    end_local: str | None
    available_s: float | None = Field(
        description="calendar time of the shift in the window, up to now (None outside shifts: only"
        " running time counts there)"
    )
    available_hm: str | None
    recorded_s: float = Field(description="of it, the time the record knows (in shifts, comms loss included)")
    planned_s: float = Field(description="planned production time: less planned stops and comms loss")
    planned_hm: str
    running_s: float = Field(description="time the machine ran (cutting: micro-stops left out)")
    running_hm: str
    utilisation: float | None = Field(description="running / available")
    of_planned: float | None = Field(description="running / planned")


class UtilisationOut(BaseModel):
    range: Range
    timezone: str
    definition_version: str
    rows: list[UtilisationRow] = Field(description="by machine, then shift")


@router.get(
    "/utilisation",
    response_model=UtilisationOut,
    summary="Machine utilisation by shift: running, planned and available time",
    responses=responses(404, 422),
)
@shared
def utilisation(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    definition: OeeDefinition,
    start: Annotated[When | None, START] = None,
    end: Annotated[When | None, END] = None,
    machine: Annotated[list[str] | None, MACHINE] = None,
) -> Response:
    """Each machine in each shift of the window (default: the current production day up to now):
    available (the shift's calendar time up to now), planned production time and running time, with
    the shares. Without a shift calendar, one row a machine for the window."""
    wanted = known_machines(store, machine)
    w = resolve(request, store, settings.max_interval_days, calendar, start, end, prefer=PRODUCTION_DAY)
    until = min(w.end_ms, w.now_ms)
    tallies = oee(
        store,
        calendar,
        definition,
        w.start_ms,
        w.end_ms,
        ("machine", "shift"),
        wanted,
        w.zone,
        w.now_ms,
        times_only=True,
    )
    by: dict[tuple[str, str | None], Tally] = {}
    for group, t in tallies.items():
        g = dict(group)
        m = g["machine"]
        if m is not None:
            by[(m, g["shift"])] = t
    spans: dict[str | None, tuple[int, int] | None] = {}
    if calendar is None:
        spans[None] = (w.start_ms, max(until, w.start_ms))
    else:
        for s in calendar.shifts(w.start_ms, until) if until > w.start_ms else []:
            spans[s.key] = (max(s.start_ms, w.start_ms), min(s.end_ms, until))
    rows = []
    for m in wanted:
        keys = list(spans) + sorted({k for mm, k in by if mm == m and k not in spans}, key=lambda k: k or "")
        for key in keys:
            t = by.get((m, key), Tally())
            span = spans.get(key)
            available = None if span is None else (span[1] - span[0]) / 1000
            running = t.run_s - t.performance_stop_s
            if span is None and running <= 0:
                continue  # outside every shift only running time counts: none here
            rows.append(  # UtilisationRow's fields, plain (`sent_as`)
                {
                    "machine": m,
                    "shift": key,
                    "start": None if span is None else iso(span[0]),
                    "start_local": None if span is None else local(span[0], w.zone),
                    "end": None if span is None else iso(span[1]),
                    "end_local": None if span is None else local(span[1], w.zone),
                    "available_s": available,
                    "available_hm": hm_or_none(available),
                    "recorded_s": round(t.planned_s + t.planned_stop_s + t.unknown_s, 3),
                    "planned_s": round(t.planned_s, 3),
                    "planned_hm": hm(t.planned_s),
                    "running_s": round(running, 3),
                    "running_hm": hm(running),
                    "utilisation": round(running / available, 4) if available else None,
                    "of_planned": round(running / t.planned_s, 4) if t.planned_s > 0 else None,
                }
            )
    head = UtilisationOut(range=w.range(), timezone=w.zone, definition_version=definition.version, rows=[])
    return sent_as(head, rows=rows)
