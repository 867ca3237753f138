"""The shift calendar: which shift (and break) a moment belongs to, in the site's time zone.

Pure: no clock, no storage. Shifts are given in local wall-clock time by weekday; each occurrence is
turned into UTC on its own date, so a night shift across a daylight-saving change is as long as it
really was (7 h or 9 h for a 22:00-06:00 shift), and a start time that does not exist that night
(spring forward) begins at the first moment that does. Holidays remove the shifts that start on them;
overtime adds occurrences outside the pattern. Breaks are planned downtime inside a shift.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from uns.site import ShiftsConfig

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class BreakDef:
    name: str
    start: time
    end: time


@dataclass(frozen=True, slots=True)
class ShiftDef:
    """A shift of the weekly pattern: it starts on each of `days` at `start`; an `end` at or before the
    start is on the next day."""

    name: str
    start: time
    end: time
    days: frozenset[int]  # 0 = Monday
    breaks: tuple[BreakDef, ...] = ()


@dataclass(frozen=True, slots=True)
class Overtime:
    name: str
    start: datetime  # local, naive
    end: datetime


@dataclass(frozen=True, slots=True)
class Shift:
    """One occurrence of a shift: `day` is the production date (the local date it started on)."""

    name: str
    day: date
    start_ms: int
    end_ms: int
    breaks: tuple[tuple[str, int, int], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.day.isoformat()}/{self.name}"


def _ms(local: datetime, tz: ZoneInfo) -> int:
    """UTC ms of a local wall time; the first of two when the clocks went back; when the clocks
    sprang forward over it, the first moment whose wall time is at or after it."""
    utc = local.replace(tzinfo=tz).astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != local:  # skipped by a spring-forward change
        utc = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
        while utc.astimezone(tz).replace(tzinfo=None) < local:
            utc += timedelta(minutes=1)
    return int(utc.timestamp() * 1000)


class ShiftCalendar:
    def __init__(
        self,
        tz: str,
        pattern: Iterable[ShiftDef],
        *,
        holidays: Iterable[date] = (),
        overtime: Iterable[Overtime] = (),
    ) -> None:
        self.tz = ZoneInfo(tz)
        self.pattern = tuple(pattern)
        self.holidays = frozenset(holidays)
        self.overtime = tuple(overtime)
        self._cache: dict[date, list[Shift]] = {}

    def _occurrences(self, day: date) -> list[Shift]:
        """The shifts that start on local date `day`."""
        cached = self._cache.get(day)
        if cached is not None:
            return cached
        out: list[Shift] = []
        if day not in self.holidays:
            for s in self.pattern:
                if day.weekday() not in s.days:
                    continue
                start = datetime.combine(day, s.start)
                end = datetime.combine(day + timedelta(days=1) if s.end <= s.start else day, s.end)
                breaks = []
                for b in s.breaks:
                    b_start = datetime.combine(
                        day if b.start >= s.start else day + timedelta(days=1), b.start
                    )
                    b_end = datetime.combine(
                        b_start.date() + timedelta(days=1) if b.end <= b.start else b_start.date(), b.end
                    )
                    breaks.append((b.name, _ms(b_start, self.tz), _ms(b_end, self.tz)))
                out.append(Shift(s.name, day, _ms(start, self.tz), _ms(end, self.tz), tuple(breaks)))
        for o in self.overtime:
            if o.start.date() == day:
                out.append(Shift(o.name, day, _ms(o.start, self.tz), _ms(o.end, self.tz)))
        out.sort(key=lambda sh: sh.start_ms)
        self._cache[day] = out
        return out

    def _local_day(self, ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, self.tz).date()

    def shifts(self, start_ms: int, end_ms: int) -> list[Shift]:
        """Every shift that overlaps [start, end), in time order."""
        first = self._local_day(start_ms) - timedelta(days=1)  # a shift from the day before may run on
        last = self._local_day(end_ms)
        out = []
        day = first
        while day <= last:
            out += [s for s in self._occurrences(day) if s.start_ms < end_ms and s.end_ms > start_ms]
            day += timedelta(days=1)
        return out

    def shift_at(self, ms: int) -> Shift | None:
        found = self.shifts(ms, ms + 1)
        return found[0] if found else None

    def in_break(self, start_ms: int, end_ms: int) -> bool:
        """True when [start, end) lies inside one of the shifts' planned breaks."""
        return any(
            b_start <= start_ms and end_ms <= b_end
            for shift in self.shifts(start_ms, end_ms)
            for _, b_start, b_end in shift.breaks
        )

    def split(self, start_ms: int, end_ms: int) -> list[tuple[int, int, Shift | None]]:
        """[start, end) cut at every shift boundary; the pieces outside any shift carry None."""
        bounds = {start_ms, end_ms}
        shifts = self.shifts(start_ms, end_ms)
        for s in shifts:
            bounds.update(t for t in (s.start_ms, s.end_ms) if start_ms < t < end_ms)
        cuts = sorted(bounds)
        starts = [s.start_ms for s in shifts]
        out: list[tuple[int, int, Shift | None]] = []
        for a, b in itertools.pairwise(cuts):
            i = bisect.bisect_right(starts, a) - 1
            owner = shifts[i] if i >= 0 and shifts[i].start_ms <= a < shifts[i].end_ms else None
            out.append((a, b, owner))
        return out


def calendar_for(config: ShiftsConfig, timezone: str) -> ShiftCalendar:
    """The calendar of a site model's `shifts:` section, in the site's time zone."""

    def hhmm(text: str) -> time:
        return time(int(text[:2]), int(text[3:]))

    pattern = [
        ShiftDef(
            s.name,
            hhmm(s.start),
            hhmm(s.end),
            frozenset(WEEKDAYS.index(d) for d in s.days),
            tuple(BreakDef(b.name, hhmm(b.start), hhmm(b.end)) for b in s.breaks),
        )
        for s in config.pattern
    ]
    overtime = [Overtime(o.name, o.start, o.end) for o in config.overtime]
    return ShiftCalendar(timezone, pattern, holidays=config.holidays, overtime=overtime)
