"""`/api/v1/export/{kind}`: the record of a time range as a file a plant keeps (docs/exports.md).

Four kinds: `intervals` (every closed state interval with its context), `parts` (part counts and
quality reports), `operations` (dispatched operations with plan, actuals and counts) and `reasons`
(the reason audit: who changed a stop's reason, how, when, from what to what, and why). As CSV (a
header row, RFC 4180 quoting, UTF-8) or JSON Lines (one object a line), every time in UTC and in the
site's local time with its offset, to the millisecond.

Streamed: the body is written a page of rows at a time while the record is read a page at a time
(services/context/record.py, `export_*`, from one consistent snapshot), so a year of 50 machines is
never in memory. A row belongs to the range when it overlaps it, and is exported whole: an interval
that crosses an edge is in the export of both ranges, with its true start and end (`in_range_s` says
how much of it lies in this one). Errors (a bad window, an unknown machine) are answered before the
first byte; a failure after that ends the body early (logged), never with a made-up tail.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import StreamingResponse

from services.api.deps import Calendar, Reasons, Settings, Store
from services.api.errors import ApiError, responses
from services.api.when import (
    PRODUCTION_DAY,
    When,
    check,
    local_date,
    now_of,
    production_day,
    resolve,
    site_zone,
)
from services.context.reasons import Reason
from services.context.record import RecordReader
from services.context.shifts import ShiftCalendar
from services.context.state import Interval

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/export", tags=["exports"])

Kind = Literal["intervals", "parts", "operations", "reasons"]
Format = Literal["csv", "jsonl"]
PAGE = 2000  # rows read from the record at a time
CHUNK = 500  # rows written at a time (a chunk of the body)
DAY_MS = 86_400_000
LAST_24H = "last 24 h"
LOOK_BACK_DAYS = 14  # how far back the default looks for a production day with shifts
MEDIA = {"csv": "text/csv", "jsonl": "application/x-ndjson"}

INTERVAL_COLUMNS = (
    *("machine", "path", "start", "end", "start_local", "end_local", "duration_s", "in_range_s"),
    *("state", "reason", "reason_name", "planned", "loss", "reason_source", "reason_evidence"),
    *("stop_start", "state_start", "job", "operation", "shift", "operator", "hold", "story"),
)
PART_COLUMNS = (
    *("machine", "path", "time", "time_local", "kind", "quantity", "counter", "job", "operation"),
    *("shift", "by", "via"),
)
OPERATION_COLUMNS = (
    *("machine", "path", "job", "operation", "part_number", "program", "sequence", "quantity"),
    *("ideal_cycle_s", "status", "planned_start", "planned_start_local", "planned_end"),
    *("planned_end_local", "dispatched", "dispatched_local", "actual_start", "actual_start_local"),
    *("actual_end", "actual_end_local", "made", "made_in_range", "scrap", "rework"),
)
REASON_COLUMNS = (
    *("seq", "machine", "path", "stop_start", "stop_start_local", "old_reason", "new_reason"),
    *("new_reason_name", "planned", "by", "via", "changed", "changed_local", "note"),
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "intervals": INTERVAL_COLUMNS,
    "parts": PART_COLUMNS,
    "operations": OPERATION_COLUMNS,
    "reasons": REASON_COLUMNS,
}

_CSV_EXAMPLE = (
    "machine,path,start,end,start_local,end_local,duration_s,in_range_s,state,reason,reason_name,planned,"
    "loss,reason_source,reason_evidence,stop_start,state_start,job,operation,shift,operator,hold,story\r\n"
    "vf2-01,acme/dayton/machining/mills/cell-1/vf2-01,2026-11-18T11:00:00.000Z,2026-11-18T11:12:30.000Z,"
    "2026-11-18T06:00:00.000-05:00,2026-11-18T06:12:30.000-05:00,750.0,750.0,down,tooling,Tooling,false,"
    'availability,operator,"maria via api at 2026-11-18T11:20:00.000Z: insert chipped",'
    "2026-11-18T10:58:00.000Z,2026-11-18T10:58:00.000Z,24173,20,2026-11-18/first,maria,,\r\n"
)
_JSONL_EXAMPLE = (
    '{"machine":"vf2-01","path":"acme/dayton/machining/mills/cell-1/vf2-01",'
    '"start":"2026-11-18T11:00:00.000Z","end":"2026-11-18T11:12:30.000Z",'
    '"start_local":"2026-11-18T06:00:00.000-05:00","end_local":"2026-11-18T06:12:30.000-05:00",'
    '"duration_s":750.0,"in_range_s":750.0,"state":"down","reason":"tooling","reason_name":"Tooling",'
    '"planned":false,"loss":"availability","reason_source":"operator",'
    '"reason_evidence":"maria via api at 2026-11-18T11:20:00.000Z: insert chipped",'
    '"stop_start":"2026-11-18T10:58:00.000Z","state_start":"2026-11-18T10:58:00.000Z","job":"24173",'
    '"operation":"20","shift":"2026-11-18/first","operator":"maria","hold":null,"story":null}\n'
)
_HEADERS = {
    "Content-Disposition": {
        "description": "attachment, with a file name of the kind and the range in local time",
        "schema": {"type": "string"},
        "example": 'attachment; filename="intervals_2026-11-18_2026-11-19.csv"',
    },
    "X-Export-Start": {"description": "the range's start (UTC)", "schema": {"type": "string"}},
    "X-Export-End": {"description": "the range's end (UTC)", "schema": {"type": "string"}},
    "X-Export-Timezone": {
        "description": "the site's time zone of the `_local` times",
        "schema": {"type": "string"},
    },
    "X-Export-Default": {
        "description": "what the API filled in: `last production day` or `last 24 h` (neither start nor"
        " end given), `to now` (no end), `production day of end` (no start); absent: the request gave it",
        "schema": {"type": "string"},
    },
}
LAST_PRODUCTION_DAY = "last production day"


class Times:
    """UTC and local ISO-8601 times of record milliseconds, to the millisecond
    (`2026-11-18T11:00:00.000Z`, `2026-11-18T06:00:00.000-05:00`). An export writes millions of
    them, most more than once (an interval ends where the next begins, a stop's start is its first
    piece's): each hour's date and hour are formatted once, its UTC offset looked up once (and moment by
    moment in an hour where the clocks change), and the latest times are kept as written."""

    KEEP = 1024  # times and hours kept as written, each (then forgotten, and written again)

    def __init__(self, zone: str) -> None:
        self.tz = ZoneInfo(zone)
        self._utc: dict[int, str] = {}
        self._local: dict[int, str] = {}
        self._prefixes: dict[int, str] = {}  # by hour
        self._hours: dict[int, tuple[int, str] | None] = {}

    def _write(self, ms: int, suffix: str) -> str:
        hour, rest = divmod(ms, 3_600_000)
        prefix = self._prefixes.get(hour)
        if prefix is None:
            if len(self._prefixes) >= self.KEEP:
                self._prefixes.clear()
            prefix = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:")
            self._prefixes[hour] = prefix
        minute, rest = divmod(rest, 60_000)
        second, milli = divmod(rest, 1000)
        return f"{prefix}{minute:02d}:{second:02d}.{milli:03d}{suffix}"

    def utc(self, ms: int | None) -> str | None:
        if ms is None:
            return None
        text = self._utc.get(ms)
        if text is None:
            if len(self._utc) >= self.KEEP:
                self._utc.clear()
            text = self._utc[ms] = self._write(ms, "Z")
        return text

    def local(self, ms: int | None) -> str | None:
        if ms is None:
            return None
        text = self._local.get(ms)
        if text is not None:
            return text
        hour = ms // 3_600_000
        offset = self._hours.get(hour, ...)
        if offset is ...:
            if len(self._hours) >= self.KEEP:
                self._hours.clear()
            first, last = self._offset(hour * 3_600_000), self._offset(hour * 3_600_000 + 3_599_999)
            offset = self._hours[hour] = first if first == last else None
        if offset is None:  # the clocks change in this hour
            offset = self._offset(ms)
        if len(self._local) >= self.KEEP:
            self._local.clear()
        text = self._local[ms] = self._write(ms + offset[0], offset[1])
        return text

    def _offset(self, ms: int) -> tuple[int, str]:
        delta = datetime.fromtimestamp(ms / 1000, self.tz).utcoffset() or timedelta(0)
        seconds = int(delta.total_seconds())
        sign = "-" if seconds < 0 else "+"
        hh, rest = divmod(abs(seconds), 3600)
        mm, ss = divmod(rest, 60)
        return seconds * 1000, f"{sign}{hh:02d}:{mm:02d}" + (f":{ss:02d}" if ss else "")


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Values:
    """How a yes/no and a JSON document are written: as values (JSON Lines), or as the text of a
    CSV field (`true`/`false`, the document as compact JSON). Everything else is written as it is
    (null is an empty CSV field)."""

    def __init__(self, format: str) -> None:
        self.csv = format == "csv"
        self.true: Any = "true" if self.csv else True
        self.false: Any = "false" if self.csv else False

    def flag(self, value: bool) -> Any:
        return self.true if value else self.false

    def doc(self, value: dict[str, Any] | None) -> Any:
        return _compact(value) if self.csv and value is not None else value


Row = tuple[Any, ...]


Page = Iterator[Row]  # a page's rows, made as they are written (never all of a page at once)


def interval_rows(
    pages: Iterable[list[Interval]],
    start_ms: int,
    end_ms: int,
    paths: dict[str, str],
    reasons: dict[str, Reason],
    times: Times,
    values: Values,
) -> Iterator[Page]:
    flag, doc, utc, local = values.flag, values.doc, times.utc, times.local

    def rows(page: list[Interval]) -> Page:
        for i in page:
            reason = reasons.get(i.reason) if i.reason is not None else None
            yield (
                *(i.machine_id, paths.get(i.machine_id), utc(i.start_ms), utc(i.end_ms)),
                *(local(i.start_ms), local(i.end_ms), (i.end_ms - i.start_ms) / 1000),
                (min(i.end_ms, end_ms) - max(i.start_ms, start_ms)) / 1000,
                *(i.state.value, i.reason, reason.name if reason else None),
                flag(bool(reason and reason.planned)),
                *(reason.loss.value if reason else None, i.source, i.evidence),
                *(utc(i.stop_start_ms), utc(i.run_start_ms), i.job, i.operation, i.shift, i.operator),
                *(i.hold, doc(i.story._asdict() if i.story is not None else None)),
            )

    for page in pages:
        yield rows(page)
        del page  # not held while the next page is read


def part_rows(pages: Iterable[list[Row]], paths: dict[str, str], times: Times) -> Iterator[Page]:
    utc, local = times.utc, times.local

    def rows(page: list[Row]) -> Page:
        for m, ts, kind, q, counter, job, op, shift, by, via in page:
            yield (m, paths.get(m), utc(ts), local(ts), kind, q, counter, job, op, shift, by, via)

    for page in pages:
        yield rows(page)
        del page  # not held while the next page is read


def operation_rows(pages: Iterable[list[Row]], paths: dict[str, str], times: Times) -> Iterator[Page]:
    utc, local = times.utc, times.local

    def rows(page: list[Row]) -> Page:
        for m, job, op, part, program, seq, qty, ideal, status_, p0, p1, sent, a0, a1, *counts in page:
            yield (
                *(m, paths.get(m), job, op, part, program, seq, qty),
                ideal / 1000 if ideal is not None else None,
                status_,
                *(utc(p0), local(p0), utc(p1), local(p1), utc(sent), local(sent)),
                *(utc(a0), local(a0), utc(a1), local(a1)),
                *counts,
            )

    for page in pages:
        yield rows(page)
        del page  # not held while the next page is read


def reason_rows(
    pages: Iterable[list[Row]],
    paths: dict[str, str],
    reasons: dict[str, Reason],
    times: Times,
    values: Values,
) -> Iterator[Page]:
    utc, local = times.utc, times.local

    def rows(page: list[Row]) -> Page:
        for seq, m, stop, old, new, by, via, changed, note in page:
            reason = reasons.get(new)
            yield (
                *(seq, m, paths.get(m), utc(stop), local(stop), old, new),
                reason.name if reason else None,
                values.flag(bool(reason and reason.planned)),
                *(by, via, utc(changed), local(changed), note),
            )

    for page in pages:
        yield rows(page)
        del page  # not held while the next page is read


# -- the body ------------------------------------------------------------------------------------
class _Lines(list[str]):
    """Where the CSV writer writes: its lines, joined once a page (a StringIO keeps 4 bytes a
    character)."""

    def write(self, line: str) -> None:
        self.append(line)


def csv_body(columns: tuple[str, ...], rows: Iterable[Page]) -> Iterator[bytes]:
    """A header row, then the rows (RFC 4180: CRLF, quoted where needed; an empty field is null)."""
    lines = _Lines()
    writer = csv.writer(lines)  # the excel dialect: RFC 4180 quoting and CRLF line ends
    writer.writerow(columns)
    for page in rows:
        while batch := list(itertools.islice(page, CHUNK)):
            writer.writerows(batch)
            yield "".join(lines).encode()
            lines.clear()
    if lines:
        yield "".join(lines).encode()  # the header row of an empty export


def jsonl_body(columns: tuple[str, ...], rows: Iterable[Page]) -> Iterator[bytes]:
    """One JSON object a line, its keys in the order of the CSV's columns."""
    for page in rows:
        while batch := list(itertools.islice(page, CHUNK)):
            yield "".join(_compact(dict(zip(columns, row, strict=True))) + "\n" for row in batch).encode()


def _logged(body: Iterator[bytes], what: str) -> Iterator[bytes]:
    """The body; a failure after the first byte cannot change the status: it is logged, and the body
    ends early (the client sees a broken chunked transfer, not a short file that looks whole)."""
    try:
        yield from body
    except Exception:
        logger.exception("export %s failed while streaming", what)
        raise


# -- the window ----------------------------------------------------------------------------------
def last_production_day(calendar: ShiftCalendar, zone: str, now_ms: int) -> tuple[int, int] | None:
    """The latest production date before now that had shifts and whose shifts have all ended: from
    its local midnight to the next (or to the end of its last shift, a night shift that runs on)."""
    today = local_date(now_ms, zone)
    for back in range(1, LOOK_BACK_DAYS + 1):
        start_ms, end_ms, shifts = production_day(calendar, zone, today - timedelta(days=back))
        if shifts and end_ms <= now_ms:
            return start_ms, end_ms
    return None


def window(
    request: Request,
    store: RecordReader,
    max_days: int,
    calendar: ShiftCalendar | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[int, int, str | None]:
    """The export's range (UTC ms) and what was filled in (None: the request gave both ends)."""
    if start is not None or end is not None:
        w = resolve(request, store, max_days, calendar, start, end, prefer=PRODUCTION_DAY)
        return w.start_ms, w.end_ms, w.default
    now_ms = now_of(request, store)
    day = last_production_day(calendar, site_zone(request), now_ms) if calendar is not None else None
    start_ms, end_ms, label = (*day, LAST_PRODUCTION_DAY) if day else (now_ms - DAY_MS, now_ms, LAST_24H)
    check(start_ms, end_ms, max_days)
    return start_ms, end_ms, label


def filename(kind: str, start_ms: int, end_ms: int, zone: str, ext: str) -> str:
    """`intervals_2026-11-18_2026-11-19.csv`: the local dates of the range; a bound that is not at
    local midnight has its local time too (`2026-11-19T0600`)."""
    tz = ZoneInfo(zone)

    def bound(ms: int) -> str:
        t = datetime.fromtimestamp(ms / 1000, tz)
        midnight = (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0)
        return t.strftime("%Y-%m-%d" if midnight else "%Y-%m-%dT%H%M")

    return f"{kind}_{bound(start_ms)}_{bound(end_ms)}.{ext}"


# -- the route -----------------------------------------------------------------------------------
_DESCRIPTION = {
    "intervals": "every closed state interval that overlaps the range, whole, with its context",
    "parts": "part counts (kind `made`) and quality reports (scrap, rework, good, pass, fail) in it",
    "operations": "dispatched operations that ran in the range or, not started, were planned in it",
    "reasons": "the reason audit: every change of a stop's reason made in the range",
}


@router.get(
    "/{kind}",
    response_class=StreamingResponse,
    summary="The record of a time range as CSV or JSON Lines (streamed)",
    responses={
        200: {
            "description": "the export, streamed; a CSV has a header row (docs/exports.md lists the columns)",
            "headers": _HEADERS,
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": _CSV_EXAMPLE},
                "application/x-ndjson": {"schema": {"type": "string"}, "example": _JSONL_EXAMPLE},
            },
        },
        **responses(404, 422),
    },
)
def export(
    request: Request,
    store: Store,
    settings: Settings,
    calendar: Calendar,
    taxonomy: Reasons,
    kind: Annotated[
        Kind,
        Path(
            description="; ".join(f"`{k}`: {d}" for k, d in _DESCRIPTION.items()),
            examples=["intervals"],
        ),
    ],
    format: Annotated[
        Format, Query(description="`csv` (RFC 4180, UTF-8) or `jsonl` (JSON Lines)", examples=["jsonl"])
    ] = "csv",
    start: Annotated[
        When | None,
        Query(
            description="range start, ISO-8601 with offset; without start and end: the last production"
            " day (the last 24 h without a shift calendar)",
            examples=["2026-11-18T00:00:00-05:00"],
        ),
    ] = None,
    end: Annotated[
        When | None,
        Query(description="range end (exclusive); default: now", examples=["2026-11-19T00:00:00-05:00"]),
    ] = None,
    machine: Annotated[
        list[str] | None,
        Query(description="only these machines (repeatable); default: every machine", examples=[["vf2-01"]]),
    ] = None,
) -> StreamingResponse:
    """The record of `[start, end)` as a file (`Content-Disposition: attachment`), streamed as it is
    read. A row belongs to the range when it overlaps it (an interval) or falls in it (a count, a
    reason change) and is exported whole: an interval across an edge of the range is in the export
    of both ranges with its true start and end, and `in_range_s` says how long it lies in this one.
    Open intervals (a machine's current state) are not in it until they close. The range may be up
    to the API's `max_export_days` (366 by default: a year)."""
    start_ms, end_ms, default = window(request, store, settings.max_export_days, calendar, start, end)
    states = store.current_states()
    paths = {c.machine_id: c.path for c in states}
    unknown = sorted(set(machine or ()) - set(paths))
    if unknown:
        raise ApiError(
            status.HTTP_404_NOT_FOUND, f"no machines {unknown} in the site model", ["query", "machine"]
        )
    wanted = sorted(set(machine)) if machine else sorted(paths)
    zone = site_zone(request)
    times = Times(zone)
    rows = _rows(kind, store, wanted, start_ms, end_ms, paths, taxonomy, times, Values(format))
    columns = COLUMNS[kind]
    body = csv_body(columns, rows) if format == "csv" else jsonl_body(columns, rows)
    headers = {
        "Content-Disposition": f'attachment; filename="{filename(kind, start_ms, end_ms, zone, format)}"',
        "X-Export-Start": times.utc(start_ms) or "",
        "X-Export-End": times.utc(end_ms) or "",
        "X-Export-Timezone": zone,
    }
    if default is not None:
        headers["X-Export-Default"] = default
    return StreamingResponse(_logged(body, kind), media_type=MEDIA[format], headers=headers)


def _rows(
    kind: str,
    store: RecordReader,
    machines: list[str],
    start_ms: int,
    end_ms: int,
    paths: dict[str, str],
    reasons: dict[str, Reason],
    times: Times,
    values: Values,
) -> Iterator[Page]:
    if kind == "intervals":
        intervals = store.export_intervals(machines, start_ms, end_ms, PAGE)
        return interval_rows(intervals, start_ms, end_ms, paths, reasons, times, values)
    if kind == "parts":
        return part_rows(store.export_counts(machines, start_ms, end_ms, PAGE), paths, times)
    if kind == "operations":
        return operation_rows(store.export_operations(machines, start_ms, end_ms, PAGE), paths, times)
    audit = store.export_reason_audit(machines, start_ms, end_ms, PAGE)
    return reason_rows(audit, paths, reasons, times, values)
