"""The shift calendar (pure): weekly pattern, breaks, holidays, overtime, and daylight-saving nights."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from services.context.shifts import BreakDef, Overtime, ShiftCalendar, ShiftDef

NY = ZoneInfo("America/New_York")
WEEK = frozenset(range(7))


def ms(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=NY).timestamp() * 1000)


def calendar(**kw: object) -> ShiftCalendar:
    return ShiftCalendar(
        "America/New_York",
        [
            ShiftDef("first", time(6), time(14), WEEK, (BreakDef("coffee", time(9), time(9, 15)),)),
            ShiftDef("second", time(14), time(22), WEEK),
            ShiftDef("third", time(22), time(6), WEEK, (BreakDef("lunch", time(2), time(2, 30)),)),
        ],
        **kw,  # type: ignore[arg-type]
    )


def hours(start_ms: int, end_ms: int) -> float:
    return (end_ms - start_ms) / 3_600_000


def test_a_moment_after_midnight_belongs_to_the_night_shift_of_the_day_before() -> None:
    s = calendar().shift_at(ms(2026, 11, 18, 3, 0))
    assert s is not None
    assert (s.name, s.day) == ("third", date(2026, 11, 17))
    assert s.key == "2026-11-17/third"
    assert s.breaks == (("lunch", ms(2026, 11, 18, 2, 0), ms(2026, 11, 18, 2, 30)),)


def test_night_shifts_across_daylight_saving_changes_are_as_long_as_they_really_were() -> None:
    cal = calendar()
    fall = cal.shift_at(ms(2026, 11, 1, 3, 0))  # clocks go back at 02:00 on 1 Nov 2026
    spring = cal.shift_at(ms(2026, 3, 8, 4, 0))  # clocks go forward at 02:00 on 8 Mar 2026
    normal = cal.shift_at(ms(2026, 11, 18, 3, 0))
    assert fall is not None
    assert spring is not None
    assert normal is not None
    assert (fall.day, hours(fall.start_ms, fall.end_ms)) == (date(2026, 10, 31), 9.0)
    assert (spring.day, hours(spring.start_ms, spring.end_ms)) == (date(2026, 3, 7), 7.0)
    assert hours(normal.start_ms, normal.end_ms) == 8.0
    # the 02:00-02:30 lunch does not exist on the spring night: it begins when the clocks jump
    [(_, b_start, b_end)] = spring.breaks
    assert b_start == b_end == int(datetime(2026, 3, 8, 7, 0, tzinfo=UTC).timestamp() * 1000)


def test_a_start_time_skipped_by_spring_forward_starts_when_the_clocks_jump() -> None:
    cal = ShiftCalendar("America/New_York", [ShiftDef("early", time(2, 30), time(10), WEEK)])
    s = cal.shift_at(ms(2026, 3, 8, 5, 0))
    assert s is not None
    assert datetime.fromtimestamp(s.start_ms / 1000, NY).strftime("%H:%M %Z") == "03:00 EDT"


def test_holidays_remove_shifts_and_overtime_adds_them() -> None:
    cal = calendar(
        holidays=[date(2026, 12, 25)],
        overtime=[Overtime("overtime", datetime(2026, 12, 25, 8), datetime(2026, 12, 25, 12))],
    )
    assert cal.shift_at(ms(2026, 12, 25, 7, 0)) is None
    ot = cal.shift_at(ms(2026, 12, 25, 9, 0))
    assert ot is not None
    assert (ot.name, hours(ot.start_ms, ot.end_ms)) == ("overtime", 4.0)
    night_before = cal.shift_at(ms(2026, 12, 25, 3, 0))  # started on the 24th: still worked
    assert night_before is not None
    assert night_before.day == date(2026, 12, 24)


def test_an_interval_is_split_at_shift_boundaries() -> None:
    cal = ShiftCalendar(
        "America/New_York", [ShiftDef("first", time(6), time(14), frozenset({0, 1, 2, 3, 4}))]
    )
    pieces = cal.split(ms(2026, 11, 20, 13, 0), ms(2026, 11, 23, 7, 0))  # Friday 13:00 to Monday 07:00
    assert [(hours(a, b), s.key if s else None) for a, b, s in pieces] == [
        (1.0, "2026-11-20/first"),
        (64.0, None),  # the weekend: Friday 14:00 to Monday 06:00
        (1.0, "2026-11-23/first"),
    ]


def test_the_example_site_has_a_calendar() -> None:
    from services.context.shifts import calendar_for
    from uns.site import load_site
    from unscli.cli import DEFAULT_SITE

    site = load_site(DEFAULT_SITE)
    assert site.config.shifts is not None
    cal = calendar_for(site.config.shifts, site.config.timezone)
    monday_night = cal.shift_at(ms(2026, 11, 24, 1, 0))  # Tuesday 01:00: Monday's third shift
    assert monday_night is not None
    assert monday_night.key == "2026-11-23/third"
    assert cal.shift_at(ms(2026, 11, 26, 10, 0)) is None  # Thanksgiving
    saturday = cal.shift_at(ms(2026, 11, 28, 7, 0))
    assert saturday is not None
    assert saturday.name == "saturday"
