"""Moments and ranges of the API's requests and answers, in UTC and in the site's local time.

`When`: a moment in a request, as the OpenAPI document says it: an ISO-8601 date and time with
its offset (`2026-11-18T14:00:00-05:00`, `...Z`) in the years 1970 to 2999 (the document says so
with a pattern). Pydantic alone would also take a number as Unix seconds (`end=0.5` is 1970), which
the document does not allow and nobody means, and a year 1 or 9999 that the shift calendar cannot
turn into a local day (a 500). `Day`: a production date (`2026-11-18`), in the same years.

`resolve`: a report's window. `start` and `end` are optional on every report: without them the
window is the current shift (when the shift calendar has one now) or the current production day
(the site's local date, from midnight), up to now; with only `start`, up to now; with only `end`,
from the start of the shift (or production day) it falls in. The answer's `range` says which
(`default`), in UTC and local time with the site's time zone. A window backwards or longer than the
API's `max_interval_days` is a 422 naming the field.

`production_day`: the window of one production date: its shifts (a shift belongs to the date it
began on: the night shift that began at 22:00 runs into the next morning) and the time outside
every shift on that local date. `local` and `hm` write a moment and a duration for a person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Request, Response, status
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, Field, WithJsonSchema
from pydantic_core import to_json

from services.api.errors import ApiError
from services.context.record import RecordReader
from services.context.shifts import Shift, ShiftCalendar
from uns.clock import iso

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
YEARS = (1970, 2999)
PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}"
DAY_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-[0-9]{2}-[0-9]{2}$"
DAY_MS = 86_400_000

# what `Range.default` says was filled in
CURRENT_SHIFT = "current shift"
PRODUCTION_DAY = "production day"
TO_NOW = "to now"
SHIFT_OF_END = "shift"
DAY_OF_END = "production day of end"
YESTERDAY = "yesterday"


def _iso_only(value: Any) -> Any:
    if isinstance(value, str) and _ISO.match(value):
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        raise ValueError("expected an ISO-8601 datetime with offset, e.g. 2026-11-18T14:00:00-05:00")
    return value  # a datetime (from Python), or something pydantic refuses itself


def _day_only(value: Any) -> Any:
    if isinstance(value, str) and _DATE.match(value):
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        raise ValueError("expected a date YYYY-MM-DD, e.g. 2026-11-18")
    return value


def _in_range(value: datetime) -> datetime:
    if not YEARS[0] <= value.year <= YEARS[1]:  # the year as written, as the pattern says
        raise ValueError(f"expected a year from {YEARS[0]} to {YEARS[1]}")
    return value


def _day_in_range(value: date) -> date:
    if not YEARS[0] <= value.year <= YEARS[1]:
        raise ValueError(f"expected a year from {YEARS[0]} to {YEARS[1]}")
    return value


When = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_only),
    AfterValidator(_in_range),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": PATTERN}),
]
Day = Annotated[
    date,
    BeforeValidator(_day_only),
    AfterValidator(_day_in_range),
    WithJsonSchema({"type": "string", "format": "date", "pattern": DAY_PATTERN}),
]


# -- for a person -----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def zone_of(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local(ms: int, zone: str) -> str:
    """ISO-8601 in the site's local time with its offset, to the second: 2026-11-18T14:00:00-05:00."""
    return datetime.fromtimestamp(ms / 1000, zone_of(zone)).isoformat(timespec="seconds")


def local_or_none(ms: int | None, zone: str) -> str | None:
    return None if ms is None else local(ms, zone)


def clock_time(ms: int, zone: str) -> str:
    """The local wall time, HH:MM."""
    return datetime.fromtimestamp(ms / 1000, zone_of(zone)).strftime("%H:%M")


def hm(seconds: float) -> str:
    """A duration as h:mm, to the nearest minute (`-0:15` for 15 minutes early)."""
    minutes = round(abs(seconds) / 60)
    sign = "-" if seconds < 0 and minutes else ""
    return f"{sign}{minutes // 60}:{minutes % 60:02d}"


def hm_or_none(seconds: float | None) -> str | None:
    return None if seconds is None else hm(seconds)


def local_date(ms: int, zone: str) -> date:
    return datetime.fromtimestamp(ms / 1000, zone_of(zone)).date()


def midnight(day: date, zone: str) -> int:
    # a local midnight the clocks skip (a few zones change at 00:00) begins at the first moment after
    start = datetime.combine(day, time(0), zone_of(zone)).astimezone(UTC)
    return int(start.timestamp() * 1000)


# -- ranges -------------------------------------------------------------------------------------
class Range(BaseModel):
    """The window an answer covers, in UTC and in the site's local time."""

    start: str = Field(description="UTC", examples=["2026-11-18T19:00:00.000Z"])
    end: str = Field(description="UTC", examples=["2026-11-19T03:00:00.000Z"])
    start_local: str = Field(description="the site's local time", examples=["2026-11-18T14:00:00-05:00"])
    end_local: str = Field(examples=["2026-11-18T22:00:00-05:00"])
    timezone: str = Field(description="the site's time zone (IANA)", examples=["America/New_York"])
    default: str | None = Field(
        description="what the API filled in: `current shift` or `production day` (no start or end"
        " given: up to now), `to now` (no end), `shift` or `production day of end` (no start),"
        " `yesterday` (the review without a day); null: the request gave the window",
        examples=["current shift"],
    )


@dataclass(frozen=True, slots=True)
class Window:
    """A report's window (UTC ms), now, and what was filled in."""

    start_ms: int
    end_ms: int
    now_ms: int
    zone: str
    default: str | None = None

    def range(self) -> Range:
        return Range(
            start=iso(self.start_ms),
            end=iso(self.end_ms),
            start_local=local(self.start_ms, self.zone),
            end_local=local(self.end_ms, self.zone),
            timezone=self.zone,
            default=self.default,
        )


def site_zone(request: Request) -> str:
    zone: str = request.app.state.timezone
    return zone


def now_of(request: Request, store: RecordReader) -> int:
    """Now (UTC ms): the API's clock, or the record's latest event time if that is later (a
    simulation ahead of the wall clock); a standing machine stands until now."""
    latest = max((c.updated_ms or 0 for c in store.current_states()), default=0)
    clock: int = request.app.state.clock()
    return max(clock, latest)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def check(start_ms: int, end_ms: int, max_days: int, *, end_given: bool = True) -> None:
    """422 naming the field when the window is backwards or longer than `max_days`."""
    if end_ms <= start_ms:
        if end_given:
            raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "end must be after start", ["query", "end"])
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"start must be before now ({iso(end_ms)}) when no end is given",
            ["query", "start"],
        )
    if end_ms - start_ms > max_days * DAY_MS:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"window is longer than {max_days} days",
            ["query", "start"],
        )


def resolve(
    request: Request,
    store: RecordReader,
    max_days: int,
    calendar: ShiftCalendar | None,
    start: datetime | None,
    end: datetime | None,
    *,
    prefer: str = CURRENT_SHIFT,
) -> Window:
    """A report's window: as given, or by default the current shift (`prefer=CURRENT_SHIFT`, when the
    calendar has a shift now; else the production day) or the current production day
    (`prefer=PRODUCTION_DAY`), up to now. Only `start`: up to now. Only `end`: from the start of the
    shift (or production day) it falls in."""
    zone = site_zone(request)
    now_ms = now_of(request, store)
    if start is not None and end is not None:
        start_ms, end_ms = _ms(start), _ms(end)
        check(start_ms, end_ms, max_days)
        return Window(start_ms, end_ms, now_ms, zone)
    if start is not None:
        start_ms = _ms(start)
        check(start_ms, now_ms, max_days, end_given=False)
        return Window(start_ms, now_ms, now_ms, zone, TO_NOW)
    end_ms = _ms(end) if end is not None else now_ms
    shift = calendar.shift_at(end_ms - 1) if calendar is not None and prefer == CURRENT_SHIFT else None
    if shift is not None:
        start_ms, label = shift.start_ms, CURRENT_SHIFT if end is None else SHIFT_OF_END
    else:
        start_ms = midnight(local_date(end_ms - 1, zone), zone)
        label = PRODUCTION_DAY if end is None else DAY_OF_END
    if end_ms <= start_ms:  # exactly at midnight
        start_ms = end_ms - 1
    check(start_ms, end_ms, max_days)
    return Window(start_ms, end_ms, now_ms, zone, label)


def production_day(calendar: ShiftCalendar | None, zone: str, day: date) -> tuple[int, int, list[Shift]]:
    """The window of a production date (UTC ms) and its shifts: from local midnight to the next
    midnight, or to the end of its last shift if that is later (a night shift that began on it)."""
    start_ms = midnight(day, zone)
    next_ms = midnight(day + timedelta(days=1), zone)
    shifts = []
    if calendar is not None:
        shifts = [s for s in calendar.shifts(start_ms, next_ms + DAY_MS) if s.day == day]
    end_ms = max([next_ms, *(s.end_ms for s in shifts)])
    return start_ms, end_ms, shifts


def of_day(shift_key: str | None, day: date) -> bool:
    """Whether a row's shift (`<date>/<name>`, None outside every shift) belongs to the production date."""
    return shift_key is None or shift_key.startswith(f"{day.isoformat()}/")


def sent_as(head: BaseModel, **rows: list[dict[str, Any]]) -> Response:
    """A report's answer of many rows: its head from the route's response model, and the rows (its
    list fields, given empty in `head`) as plain dicts of the row model's fields, serialised as they
    are (pydantic-core): building 10,000 row models costs more than reading the record for them."""
    answer = head.model_dump(mode="json")
    answer.update(rows)
    return Response(to_json(answer), media_type="application/json")


def sent(answer: BaseModel) -> Response:
    """A report's answer, built from its route's response model, sent as it is: FastAPI would check
    it against that model once more, a third of the time of a 30-day report of 10,000 rows."""
    return Response(answer.model_dump_json(), media_type="application/json")
