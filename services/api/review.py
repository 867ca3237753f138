"""The morning review (docs/review.md): one production day by shift, what a supervisor reads in five
minutes. `GET /api/v1/review?day=` (JSON) and `GET /review?day=&key=` (a printable page, no script).

- the biggest losses by machine and reason (stopped time in shifts that is neither planned nor
  running, as `/api/v1/losses` counts it), with their share of the day's lost time;
- shift against shift: OEE, availability, performance, quality, downtime, parts, and each machine;
- operations completed that day short (fewer good parts than the quantity) or late (after the
  planned end);
- jobs at risk today: open operations due by the end of today's production day that cannot make it
  (services/api/planner.py `estimates`: the remaining parts at the operation's typical cycle);
- the stops still unclassified, for someone to say why.

Times in the site's local time (and UTC in the JSON), durations as h:mm. The day is a production
date: its shifts (the night shift that began on it runs into the next morning) and the time outside
every shift on that local date (services/api/when.py `production_day`); by default yesterday's.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from services.api import tokens
from services.api.coalesce import shared
from services.api.deps import Calendar, OeeDefinition, PageCaller, Reasons, Store
from services.api.errors import ApiError, responses
from services.api.oee import known_machines, observed_cycles
from services.api.planner import OPEN, estimates
from services.api.when import (
    YESTERDAY,
    Day,
    Range,
    Window,
    hm,
    local,
    local_date,
    local_or_none,
    now_of,
    of_day,
    production_day,
    sent,
    site_zone,
)
from services.context.jobs import COMPLETE
from services.context.reasons import Reason
from services.context.record import CurrentState, RecordReader
from services.context.shifts import ShiftCalendar
from services.oee.engine import Definition, Tally
from services.oee.losses import big_loss
from services.oee.report import oee
from uns.clock import iso, parse_iso

router = APIRouter(prefix="/api/v1/review", tags=["review"])
page = APIRouter()  # the printable review: a page, opened with a link key (deps.page_caller)

UNCLASSIFIED = "unclassified"
DASH = "\N{EN DASH}"
T = TypeVar("T")
DAY_QUERY = Query(
    description="the production date (YYYY-MM-DD, the site's local date its shifts began on);"
    " default: yesterday's",
    examples=["2026-11-18"],
)
TOP_QUERY = Query(ge=1, le=50, description="how many of the biggest losses", examples=[10])
MACHINE_QUERY = Query(description="only these machines (repeatable)", examples=[["vf2-01", "vf2-02"]])


# -- the answer -------------------------------------------------------------------------------------
class Figures(BaseModel):
    """Times and counts of a group, and its ratios (summed, never averaged: docs/oee.md)."""

    planned_s: float = Field(description="planned production time")
    planned_hm: str
    run_s: float
    run_hm: str
    downtime_s: float = Field(description="availability losses: stops that are neither planned nor micro")
    downtime_hm: str
    small_stops_s: float = Field(description="micro-stops (a performance loss)")
    small_stops_hm: str
    planned_stops_s: float = Field(description="breaks and other planned stops")
    planned_stops_hm: str
    made: int = Field(description="parts made (the counter's increments, not its value)")
    good: int = Field(description="made less scrap and rework reported")
    rejected: int
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    performance_missing: str | None


class MachineFigures(Figures):
    machine: str
    name: str


class ShiftReview(Figures):
    shift: str | None = Field(
        description="`<production date>/<name>`; None: the day, or the time outside every shift"
    )
    name: str = Field(examples=["second"], description="the shift's name, `outside shifts` or `day`")
    start: str | None
    start_local: str | None
    end: str | None
    end_local: str | None
    machines: list[MachineFigures] = Field(description="each machine's figures in it")


class LossReview(BaseModel):
    machine: str
    name: str = Field(description="the machine's name")
    reason: str
    reason_name: str
    big_loss: str | None = Field(description="which of the six big losses (docs/oee.md)")
    seconds: float
    hm: str
    share: float = Field(description="of the day's lost time (all machines, planned stops left out)")
    by_shift: dict[str, str] = Field(
        description="h:mm in each shift", examples=[{"2026-11-18/first": "0:40", "2026-11-18/second": "1:05"}]
    )


class OperationReview(BaseModel):
    job: str
    operation: str
    machine: str
    part_number: str
    quantity: int
    good: int
    short_by: int = Field(description="quantity - good (0: not short)")
    planned_end: str | None
    planned_end_local: str | None
    actual_end: str
    actual_end_local: str
    late_by_s: float | None = Field(description="actual end - planned end; None without a planned end")
    late_by_hm: str | None
    short: bool
    late: bool


class RiskReview(BaseModel):
    job: str
    operation: str
    machine: str
    status: str
    quantity: int
    good: int
    remaining: int = Field(description="parts still to make")
    cycle_s: float | None = Field(description="the typical cycle the estimate uses")
    cycle_source: str | None
    remaining_hm: str | None = Field(description="running time still needed")
    planned_end: str
    planned_end_local: str
    projected_end: str | None = Field(description="the earliest end without stops (None: no estimate)")
    projected_end_local: str | None
    late_by_s: float | None = Field(description="projected end (overdue: now, if later) - planned end")
    late_by_hm: str | None
    overdue: bool = Field(description="its planned end has passed and it is not complete")


class StopReview(BaseModel):
    machine: str
    name: str
    start: str = Field(description="when the stop began (it may have begun before the day)")
    start_local: str
    end: str | None = Field(description="None: it is still going on")
    end_local: str | None
    seconds: float = Field(description="its unclassified time in the day")
    hm: str
    shift: str | None
    state: str
    job: str | None
    operation: str | None


class ReviewOut(BaseModel):
    model_config = {
        "json_schema_extra": {
            "description": "docs/review.md says what each section holds and how it is worked out"
        }
    }

    day: str = Field(examples=["2026-11-18"])
    range: Range
    as_of: str = Field(description="now: the open intervals count up to here")
    as_of_local: str
    timezone: str
    definition_version: str
    total: ShiftReview = Field(description="the whole day")
    shifts: list[ShiftReview] = Field(
        description="each shift of the day in time order, then outside shifts if anything ran then"
        " (none without a shift calendar: `total` is the day)"
    )
    top_losses: list[LossReview] = Field(
        description="the biggest losses by machine and reason, largest first"
    )
    lost_s: float = Field(description="the day's lost time: the losses' total, all machines")
    lost_hm: str
    completed_short_or_late: list[OperationReview]
    at_risk_today: list[RiskReview]
    today: str = Field(description="the production date `at_risk_today` is about (the site's date now)")
    unclassified: list[StopReview]
    unclassified_s: float
    unclassified_hm: str


# -- building it ------------------------------------------------------------------------------------
def _figures(t: Tally) -> dict[str, object]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "planned_s": round(t.planned_s, 3),
        "planned_hm": hm(t.planned_s),
        "run_s": round(t.run_s, 3),
        "run_hm": hm(t.run_s),
        "downtime_s": round(t.availability_loss_s, 3),
        "downtime_hm": hm(t.availability_loss_s),
        "small_stops_s": round(t.performance_stop_s, 3),
        "small_stops_hm": hm(t.performance_stop_s),
        "planned_stops_s": round(t.planned_stop_s, 3),
        "planned_stops_hm": hm(t.planned_stop_s),
        "made": t.made,
        "good": t.good,
        "rejected": t.rejected,
        "availability": r(t.availability),
        "performance": r(t.performance),
        "quality": r(t.quality),
        "oee": r(t.oee),
        "performance_missing": t.performance_missing,
    }


@dataclass(frozen=True, slots=True)
class _Ask:
    day: date
    default: str | None
    machines: list[str]
    top: int


def build(
    request: Request,
    store: RecordReader,
    calendar: ShiftCalendar | None,
    definition: Definition,
    taxonomy: dict[str, Reason],
    ask: _Ask,
) -> ReviewOut:
    zone = site_zone(request)
    now_ms = now_of(request, store)
    day = ask.day
    start_ms, end_ms, shifts = production_day(calendar, zone, day)
    if start_ms > now_ms:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{day} has not begun: it is {local(now_ms, zone)} in {zone}",
            ["query", "day"],
        )
    until = min(end_ms, now_ms)
    w = Window(start_ms, end_ms, now_ms, zone, ask.default)
    states = store.current_states()
    names = {c.machine_id: c.name for c in states}
    order = {c.machine_id: n for n, c in enumerate(states)}  # the site model's order (by path)
    cycles = observed_cycles(request, store)
    tallies = oee(
        store,
        calendar,
        definition,
        start_ms,
        end_ms,
        ("machine", "shift"),
        ask.machines,
        zone,
        now_ms,
        by_reason=True,
        cycles=cycles,
    )
    by: dict[tuple[str, str | None], Tally] = {}
    for group, t in tallies.items():
        g = dict(group)
        if g["machine"] is not None and of_day(g["shift"], day):
            by[(g["machine"], g["shift"])] = t

    def review_of(
        key: str | None, name: str, span: tuple[int, int] | None, rows: dict[str, Tally]
    ) -> ShiftReview:
        total = Tally()
        for t in rows.values():  # in place: `sum` would copy every tally's ideals at each step
            total += t
        machines = [
            MachineFigures(machine=m, name=names.get(m, m), **_figures(t))  # type: ignore[arg-type]
            for m, t in sorted(rows.items(), key=lambda kv: order.get(kv[0], len(order)))
        ]
        return ShiftReview(
            shift=key,
            name=name,
            start=None if span is None else iso(span[0]),
            start_local=None if span is None else local(span[0], zone),
            end=None if span is None else iso(span[1]),
            end_local=None if span is None else local(span[1], zone),
            machines=machines,
            **_figures(total),  # type: ignore[arg-type]
        )

    reviews = []
    for s in shifts:
        rows = {m: t for (m, k), t in by.items() if k == s.key}
        reviews.append(review_of(s.key, s.name, (s.start_ms, s.end_ms), rows))
    outside = {m: t for (m, k), t in by.items() if k is None}
    if calendar is not None and any(t.planned_s or t.made or t.rejected for t in outside.values()):
        reviews.append(review_of(None, "outside shifts", None, outside))
    per_machine: dict[str, Tally] = defaultdict(Tally)
    for (m, _), t in by.items():
        per_machine[m] += t
    total = review_of(None, "day", (start_ms, end_ms), dict(per_machine))

    # the biggest losses by machine and reason
    lost: dict[tuple[str, str], dict[str | None, float]] = defaultdict(lambda: defaultdict(float))
    for (m, k), t in by.items():
        for code, seconds in (t.stops_s or {}).items():
            if big_loss(code, taxonomy, definition) is not None and seconds > 0:
                lost[(m, code)][k] += seconds
    lost_s = sum(sum(v.values()) for v in lost.values())
    unshifted = "outside shifts" if calendar is not None else "day"  # no calendar: all time is planned
    ranked = sorted(lost.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[: ask.top]
    top = [
        LossReview(
            machine=m,
            name=names.get(m, m),
            reason=code,
            reason_name=taxonomy[code].name if code in taxonomy else code,
            big_loss=big_loss(code, taxonomy, definition),
            seconds=round(sum(shares.values()), 3),
            hm=hm(sum(shares.values())),
            share=round(sum(shares.values()) / lost_s, 4) if lost_s else 0.0,
            by_shift={k or unshifted: hm(v) for k, v in sorted(shares.items(), key=_shift_order)},
        )
        for (m, code), shares in ranked
    ]

    # operations completed that day short or late
    ops = store.report_operations(ask.machines, start_ms, until)  # and every open one
    ended = [o for o in ops if o.status == COMPLETE and start_ms <= (o.actual_end_ms or -1) < until]
    done = []
    for o in sorted(ended, key=lambda o: (o.actual_end_ms or 0, o.job, o.operation)):
        if o.actual_end_ms is None:
            continue
        late_s = None if o.planned_end_ms is None else (o.actual_end_ms - o.planned_end_ms) / 1000
        short, late = o.good < o.quantity, late_s is not None and late_s > 0
        if short or late:
            done.append(
                OperationReview(
                    job=o.job,
                    operation=o.operation,
                    machine=o.machine_id,
                    part_number=o.part_number,
                    quantity=o.quantity,
                    good=o.good,
                    short_by=max(o.quantity - o.good, 0),
                    planned_end=None if o.planned_end_ms is None else iso(o.planned_end_ms),
                    planned_end_local=local_or_none(o.planned_end_ms, zone),
                    actual_end=iso(o.actual_end_ms),
                    actual_end_local=local(o.actual_end_ms, zone),
                    late_by_s=late_s,
                    late_by_hm=None if late_s is None else hm(late_s),
                    short=short,
                    late=late,
                )
            )

    # jobs at risk today: open operations due by the end of today's production day
    today = local_date(now_ms, zone)
    _, today_end, _ = production_day(calendar, zone, today)
    due = [
        o for o in ops if o.status in OPEN and o.planned_end_ms is not None and o.planned_end_ms < today_end
    ]
    risks = []
    for e in sorted(
        estimates(store, definition, cycles, due, now_ms, states, every=ops).values(),
        key=lambda e: (e.op.planned_end_ms or 0, e.op.job, e.op.operation),
    ):
        o = e.op
        if not e.at_risk(now_ms) or o.planned_end_ms is None:
            continue
        overdue = now_ms > o.planned_end_ms
        until_end = max(e.projected_end_ms or now_ms, now_ms) if overdue else e.projected_end_ms
        risks.append(
            RiskReview(
                job=o.job,
                operation=o.operation,
                machine=o.machine_id,
                status=o.status,
                quantity=o.quantity,
                good=o.good,
                remaining=e.remaining,
                cycle_s=None if e.cycle_ms is None else round(e.cycle_ms / 1000, 1),
                cycle_source=e.cycle_source,
                remaining_hm=None if e.remaining_ms is None else hm(e.remaining_ms / 1000),
                planned_end=iso(o.planned_end_ms),
                planned_end_local=local(o.planned_end_ms, zone),
                projected_end=None if e.projected_end_ms is None else iso(e.projected_end_ms),
                projected_end_local=local_or_none(e.projected_end_ms, zone),
                late_by_s=None if until_end is None else (until_end - o.planned_end_ms) / 1000,
                late_by_hm=None if until_end is None else hm((until_end - o.planned_end_ms) / 1000),
                overdue=overdue,
            )
        )

    stops, unclassified_s = _unclassified(
        store, calendar, states, ask.machines, day, (start_ms, until), names, zone
    )
    return ReviewOut(
        day=day.isoformat(),
        range=w.range(),
        as_of=iso(now_ms),
        as_of_local=local(now_ms, zone),
        timezone=zone,
        definition_version=definition.version,
        total=total,
        shifts=reviews,
        top_losses=top,
        lost_s=round(lost_s, 3),
        lost_hm=hm(lost_s),
        completed_short_or_late=done,
        at_risk_today=risks,
        today=today.isoformat(),
        unclassified=stops,
        unclassified_s=round(unclassified_s, 3),
        unclassified_hm=hm(unclassified_s),
    )


def _shift_order(kv: tuple[str | None, float]) -> str:
    return kv[0] or "~"  # outside shifts last


@dataclass(slots=True)
class _Stop:
    start: int
    end: int | None  # None: going on
    shift: str | None
    state: str
    job: str | None
    operation: str | None
    seconds: float = 0.0


def _unclassified(
    store: RecordReader,
    calendar: ShiftCalendar | None,
    states: list[CurrentState],
    machines: list[str],
    day: date,
    window: tuple[int, int],
    names: dict[str, str],
    zone: str,
) -> tuple[list[StopReview], float]:
    """The day's stops still unclassified, one row a stop (however many pieces it has), in shifts
    (outside every shift a stop is no loss, and nobody is there to say why); the open one too."""
    start_ms, until = window
    pieces = [
        (m, a, b, stop, state, shift, job, op, False)
        for m, a, b, stop, state, shift, job, op in store.stops_with_reason(
            machines, UNCLASSIFIED, start_ms, until
        )
    ]
    wanted = set(machines)
    for c in states:
        piece = c.piece or {}
        if c.machine_id not in wanted or c.since_ms is None or piece.get("reason") != UNCLASSIFIED:
            continue
        stop = parse_iso(piece["stop_start"]) if piece.get("stop_start") else c.since_ms
        occurrence = calendar.shift_at(max(c.since_ms, start_ms)) if calendar is not None else None
        key = occurrence.key if occurrence is not None else None
        job, op = piece.get("job"), piece.get("operation")
        pieces.append((c.machine_id, c.since_ms, until, stop, c.state.value, key, job, op, True))
    found: dict[tuple[str, int], _Stop] = {}
    total = 0.0
    for m, p_start, p_end, stop, state, shift, job, op, ongoing in pieces:
        if (calendar is not None and shift is None) or not of_day(shift, day):
            continue
        a, b = max(p_start, start_ms), min(p_end, until)
        if b <= a:
            continue
        row = found.setdefault((m, stop), _Stop(stop, b, shift, state, job, op))
        row.seconds += (b - a) / 1000
        row.end = None if ongoing or row.end is None else max(row.end, b)
        total += (b - a) / 1000
    out = [
        StopReview(
            machine=m,
            name=names.get(m, m),
            start=iso(stop),
            start_local=local(stop, zone),
            end=None if row.end is None else iso(row.end),
            end_local=local_or_none(row.end, zone),
            seconds=round(row.seconds, 3),
            hm=hm(row.seconds),
            shift=row.shift,
            state=row.state,
            job=row.job,
            operation=row.operation,
        )
        for (m, stop), row in sorted(found.items())
    ]
    return out, total


# -- the routes ---------------------------------------------------------------------------------------
def _ask(
    request: Request, store: RecordReader, day: date | None, top: int, machine: list[str] | None
) -> _Ask:
    machines = known_machines(store, machine)
    if day is not None:
        return _Ask(day, None, machines, top)
    yesterday = local_date(now_of(request, store), site_zone(request)) - timedelta(days=1)
    return _Ask(yesterday, YESTERDAY, machines, top)


@router.get(
    "",
    response_model=ReviewOut,
    summary="The morning review of a production day, by shift",
    responses=responses(404, 422),
)
@shared
def get_review(
    request: Request,
    store: Store,
    calendar: Calendar,
    definition: OeeDefinition,
    taxonomy: Reasons,
    day: Annotated[Day | None, DAY_QUERY] = None,
    top: Annotated[int, TOP_QUERY] = 10,
    machine: Annotated[list[str] | None, MACHINE_QUERY] = None,
) -> Response:
    """The biggest losses by machine and reason, shift against shift, operations completed short or
    late, jobs at risk today and the stops still unclassified (docs/review.md). 404 names an unknown
    machine; 422 a day that has not begun."""
    return sent(
        build(request, store, calendar, definition, taxonomy, _ask(request, store, day, top, machine))
    )


@page.get(
    "/review",
    response_class=HTMLResponse,
    summary="The morning review as a printable page (open with ?key=<token>)",
    tags=["review"],
    responses=responses(401, 403, 404, 422),
)
def review_page(
    request: Request,
    caller: PageCaller,
    store: Store,
    calendar: Calendar,
    definition: OeeDefinition,
    taxonomy: Reasons,
    day: Annotated[Day | None, DAY_QUERY] = None,
    top: Annotated[int, TOP_QUERY] = 10,
    machine: Annotated[list[str] | None, MACHINE_QUERY] = None,
    key: Annotated[str | None, Query(description="the link's key: any token but a display link's")] = None,
) -> HTMLResponse:
    """The same as `GET /api/v1/review`, laid out for A4 or Letter paper: no script, nothing from
    elsewhere. Print it from the browser (turn the browser's headers and footers off: they print the
    link, key and all). A display link is refused (403): it opens the floor view only."""
    if caller.role == tokens.DISPLAY:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            "a display link opens the floor view only (/floor?key=...), not the review",
            ["query", "key"],
        )
    review = build(request, store, calendar, definition, taxonomy, _ask(request, store, day, top, machine))
    text = render(review, _site(store), key, machine)
    style = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    headers = {
        # its own style and nothing else; the key is in the link: never pass it on, never keep it
        "Content-Security-Policy": f"default-src 'none'; base-uri 'none'; form-action 'none';"
        f" frame-ancestors 'none'; style-src 'sha256-{style}'",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(text, headers=headers)


def _site(store: RecordReader) -> str:
    paths = [c.path for c in store.current_states()]
    return "/".join(paths[0].split("/")[:2]) if paths else ""


# -- the page ---------------------------------------------------------------------------------------
_CSS = """
@page { size: auto; margin: 12mm 11mm; }
* { box-sizing: border-box; }
body { font: 9.5pt/1.35 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #111; margin: 0; }
main { max-width: 188mm; margin: 0 auto; padding: 6mm 0; }
header { border-bottom: 2px solid #111; margin-bottom: 3mm; padding-bottom: 2mm; }
h1 { font-size: 15pt; margin: 0; }
.sub { color: #444; margin-top: 1mm; }
.summary { display: flex; gap: 6mm; flex-wrap: wrap; margin: 3mm 0 1mm; }
.summary div { border: 1px solid #999; padding: 1.5mm 3mm; }
.summary b { display: block; font-size: 13pt; }
h2 { font-size: 11pt; margin: 5mm 0 1.5mm; border-bottom: 1px solid #999; break-after: avoid; }
h2 small { font-weight: normal; color: #444; }
table { border-collapse: collapse; width: 100%; break-inside: auto; }
thead { display: table-header-group; }
tr { break-inside: avoid; }
th, td { border-bottom: 1px solid #ccc; padding: 0.8mm 1.2mm; text-align: left; vertical-align: top; }
th { background: #eee; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bad { font-weight: 700; }
.t { white-space: nowrap; }
.none { color: #555; font-style: italic; margin: 1mm 0; }
nav { margin-top: 6mm; color: #444; font-size: 8.5pt; }
nav a { color: #114; }
footer { margin-top: 4mm; color: #555; font-size: 8pt; border-top: 1px solid #ccc; padding-top: 1.5mm; }
@media print { nav { display: none; } main { padding: 0; max-width: none; } a { color: inherit; } }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{x * 100:.1f} %"


def _when(text: str | None, day: str) -> str:
    """A local ISO time as HH:MM, with the date when it is not the review's day."""
    if text is None:
        return DASH
    at = text[11:16]
    return at if text[:10] == day else f"{text[:10]} {at}"


ON_PAGE = 20  # rows of a list on the page (the JSON has them all): five minutes' reading


def _worst(items: list[T], key: Callable[[T], Any]) -> list[T]:
    """A list for the page: as it is, or, when it is longer than `ON_PAGE`, its worst by `key`."""
    return items if len(items) <= ON_PAGE else sorted(items, key=key, reverse=True)[:ON_PAGE]


def _more(count: int, what: str) -> str:
    if count <= ON_PAGE:
        return ""
    return (
        f'<p class="sub">The {ON_PAGE} of {count:,} {_e(what)}; all of them:'
        " <code>/api/v1/review</code>, or the operator screen for the stops.</p>"
    )


def _hours(start_local: str | None, end_local: str | None) -> str:
    """A span's local wall times, 06:00-14:00 (a span to the next midnight ends at 24:00)."""
    if start_local is None or end_local is None:
        return ""
    end = end_local[11:16]
    if end == "00:00" and end_local[:10] != start_local[:10]:
        end = "24:00"
    return f"{start_local[11:16]}{DASH}{end}"


def _table(head: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    ths = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>"


def render(review: ReviewOut, site: str, key: str | None, machine: list[str] | None) -> str:
    day = date.fromisoformat(review.day)
    title = f"Morning review: {day:%A} {day.day} {day:%B %Y}"
    t = review.total
    offset = review.range.start_local[19:] or "+00:00"
    parts = [
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="sub">{_e(site)} · production day {_e(review.day)} · times in {_e(review.timezone)}'
        f" (UTC{_e(offset)}) · as of {_e(_when(review.as_of_local, review.day))}"
        f" · OEE definition {_e(review.definition_version)}</div>",
        '<div class="summary">',
        f"<div>OEE<b>{_pct(t.oee)}</b></div>",
        f"<div>Availability · Performance · Quality<b>{_pct(t.availability)} · {_pct(t.performance)}"
        f" · {_pct(t.quality)}</b></div>",
        f"<div>Lost time<b>{_e(review.lost_hm)}</b></div>",
        f"<div>Good parts<b>{t.good:,} of {t.made:,}</b></div>",
        "</div>",
        "</header>",
    ]
    # 1 the biggest losses
    parts.append(
        f"<h2>Biggest losses <small>by machine and reason, of {_e(review.lost_hm)} lost</small></h2>"
    )
    if review.top_losses:
        rows = [
            [
                str(n),
                _e(loss.machine),
                _e(loss.reason_name),
                f"<b>{_e(loss.hm)}</b>",
                _pct(loss.share),
                _e(", ".join(f"{k.split('/')[-1]} {v}" for k, v in loss.by_shift.items())),
            ]
            for n, loss in enumerate(review.top_losses, 1)
        ]
        parts.append(_table(["#", "machine", "reason", "h:mm", "share", "by shift"], rows, {0, 3, 4}))
    else:
        parts.append('<p class="none">No lost time recorded.</p>')
    # 2 shift against shift
    parts.append("<h2>Shift against shift</h2>")
    rows = []
    for s in [*review.shifts, review.total]:
        hours = _hours(s.start_local, s.end_local)
        name = "<b>day</b>" if s is review.total else _e(s.name)
        rows.append(
            [
                name,
                f'<span class="t">{_e(hours)}</span>',
                f"<b>{_pct(s.oee)}</b>",
                _pct(s.availability),
                _pct(s.performance),
                _pct(s.quality),
                _e(s.planned_hm),
                _e(s.downtime_hm),
                _e(s.small_stops_hm),
                f"{s.good:,} / {s.made:,}",
            ]
        )
    head = ["shift", "hours", "OEE", "A", "P", "Q", "planned", "downtime", "micro-stops", "good / made"]
    parts.append(_table(head, rows, set(range(2, 10))))
    shifts = [s for s in review.shifts if s.machines] or [review.total]  # no shift calendar: the day
    machines = list(dict.fromkeys(m.machine for s in shifts for m in s.machines))
    if machines:
        cells = {(s.name, m.machine): m for s in shifts for m in s.machines}
        rows = []
        for machine_id in machines:
            row = [_e(machine_id)]
            for s in shifts:
                f = cells.get((s.name, machine_id))
                row.append(DASH if f is None else f"{_pct(f.oee)} · {_e(f.downtime_hm)} · {f.good:,}")
            rows.append(row)
        head = ["machine", *(s.name for s in shifts)]
        parts.append('<p class="sub">Each machine by shift: OEE · downtime · good parts</p>')
        parts.append(_table(head, rows, set(range(1, len(shifts) + 1))))
    # 3 operations completed short or late
    parts.append("<h2>Operations completed short or late</h2>")
    if review.completed_short_or_late:
        rows = [
            [
                _e(f"{o.job}/{o.operation}"),
                _e(o.machine),
                f'<span class="{"bad" if o.short else ""}">{o.good:,} / {o.quantity:,}</span>',
                _e(_when(o.planned_end_local, review.day)),
                _e(_when(o.actual_end_local, review.day)),
                f"<b>{_e(o.late_by_hm)}</b>" if o.late else "on time",
                f"<b>{o.short_by:,} short</b>" if o.short else "",
            ]
            for o in _worst(review.completed_short_or_late, lambda o: (o.late_by_s or 0, o.short_by))
        ]
        head = ["job/op", "machine", "good / qty", "planned end", "completed", "late by", "short"]
        parts.append(_table(head, rows, {2, 3, 4, 5}))
        parts.append(_more(len(review.completed_short_or_late), "operations, the latest first"))
    else:
        parts.append('<p class="none">None: every operation completed that day was complete and on time.</p>')
    # 4 jobs at risk today
    parts.append(
        f"<h2>Jobs at risk today <small>({_e(review.today)}, as of {_e(review.as_of_local[11:16])};"
        " remaining parts at their typical cycle, without stops)</small></h2>"
    )
    if review.at_risk_today:
        rows = [
            [
                _e(f"{r.job}/{r.operation}"),
                _e(r.machine),
                _e(r.status),
                f"{r.good:,} / {r.quantity:,}",
                DASH if r.cycle_s is None else _e(f"{r.cycle_s:g} s ({r.cycle_source})"),
                _e(r.remaining_hm or DASH),
                _e(_when(r.planned_end_local, review.today)),
                _e(_when(r.projected_end_local, review.today)),
                f"<b>{_e(r.late_by_hm or DASH)}</b>" + (" overdue" if r.overdue else ""),
            ]
            for r in _worst(review.at_risk_today, lambda r: (r.overdue, r.late_by_s or 0))
        ]
        head = [
            "job/op",
            "machine",
            "status",
            "good / qty",
            "cycle",
            "remaining",
            "due",
            "projected",
            "late by",
        ]
        parts.append(_table(head, rows, {3, 5, 6, 7, 8}))
        parts.append(_more(len(review.at_risk_today), "operations, the latest first"))
    else:
        parts.append('<p class="none">None: every operation due today can make it.</p>')
    # 5 unclassified stops
    parts.append(
        f"<h2>Stops still unclassified <small>{len(review.unclassified)} stops,"
        f" {_e(review.unclassified_hm)}</small></h2>"
    )
    if review.unclassified:
        rows = [
            [
                _e(s.machine),
                _e(_when(s.start_local, review.day)),
                f"<b>{_e(s.hm)}</b>" + (" (going on)" if s.end is None else ""),
                _e((s.shift or "").split("/")[-1]),
                _e(f"{s.job}/{s.operation}" if s.job else DASH),
            ]
            for s in _worst(review.unclassified, lambda s: s.seconds)
        ]
        parts.append(_table(["machine", "stopped at", "h:mm", "shift", "job/op"], rows, {1, 2}))
        parts.append(_more(len(review.unclassified), "stops, the longest first"))
    else:
        parts.append('<p class="none">None: every stop has a reason.</p>')

    # around it
    def link(to: date) -> str:
        query: list[tuple[str, str]] = [("day", to.isoformat())]
        query += [("machine", m) for m in machine or []]
        if key is not None:
            query.append(("key", key))
        return "/review?" + urlencode(query)

    parts.append(
        f'<nav><a href="{_e(link(day - timedelta(days=1)))}">← {_e(day - timedelta(days=1))}</a> · '
        f'<a href="{_e(link(day + timedelta(days=1)))}">{_e(day + timedelta(days=1))} →</a> · '
        f"print with the browser (Ctrl+P; turn its headers and footers off)</nav>"
    )
    parts.append(
        f"<footer>From the record: losses are stopped time in shifts that is neither planned nor running"
        f" (docs/oee.md); parts are counted parts made, not the controller's counter. The same as JSON:"
        f" /api/v1/review?day={_e(review.day)}. {_e(review.range.start_local)} to"
        f" {_e(review.range.end_local)} ({_e(review.range.start)} to {_e(review.range.end)} UTC).</footer>"
    )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body><main>\n{body}\n</main></body></html>\n"
    )
