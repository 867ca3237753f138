"""Record intervals and counts with their context (pure): a daylight-saving night, and a counter that
rolls over and is reset in the middle of an operation."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from services.context.shifts import ShiftCalendar, ShiftDef
from services.context.state import Interval, MachineState, MachineTracker, SignalValue
from services.context.timeline import MachineContext, OpEvent, attribute, enrich

NY = ZoneInfo("America/New_York")
WEEK = frozenset(range(7))
CALENDAR = ShiftCalendar(
    "America/New_York",
    [ShiftDef("second", time(14), time(22), WEEK), ShiftDef("third", time(22), time(6), WEEK)],
)


def local(day: int, hour: int, fold: int = 0) -> int:
    return int(datetime(2026, 11, day, hour, tzinfo=NY, fold=fold).timestamp() * 1000)


def test_a_stop_through_the_daylight_saving_night_is_cut_at_its_real_shift_boundaries() -> None:
    ctx = MachineContext("vf2-01")
    ctx.add_op(OpEvent("vf2-01", local(1, 0) - 24 * 3_600_000, "24173", "20", "start", "program"))
    # idle from 21:00 on 31 Oct to 07:00 on 1 Nov: the clocks go back at 02:00 in between
    start = int(datetime(2026, 10, 31, 21, tzinfo=NY).timestamp() * 1000)
    end = local(1, 7)
    pieces = enrich(Interval("vf2-01", start, end, MachineState.IDLE, "unclassified"), ctx, CALENDAR)
    hours = [((p.end_ms - p.start_ms) / 3_600_000, p.shift, p.job) for p in pieces]
    assert hours == [
        (1.0, "2026-10-31/second", "24173"),
        (9.0, "2026-10-31/third", "24173"),  # 22:00 to 06:00 that night lasted nine hours
        (1.0, None, "24173"),
    ]
    assert {p.run_start_ms for p in pieces} == {start}
    assert sum(p.end_ms - p.start_ms for p in pieces) == end - start


def test_counts_across_a_rollover_and_a_reset_go_to_the_operation_and_shift() -> None:
    ctx = MachineContext("lynx-01")
    t0 = local(18, 15)  # second shift
    ctx.add_op(OpEvent("lynx-01", t0, "24500", "10", "start", "program"))
    tracker = MachineTracker("lynx-01", counter_rollover=65536)
    values = [(0, 65534), (60_000, 65535), (120_000, 1), (180_000, 2), (240_000, 0), (300_000, 3)]
    made = []
    for offset, counter in values:
        made += tracker.apply([SignalValue("part_count", counter, t0 + offset)])[1]
    parts = attribute(made, ctx, CALENDAR)
    # 65535: +1; 1: +2 across the wrap; 2: +1; 0: a reset (nothing made); 3: +3 since the reset
    assert [(p.delta, p.job, p.operation, p.shift) for p in parts] == [
        (1, "24500", "10", "2026-11-18/second"),
        (2, "24500", "10", "2026-11-18/second"),
        (1, "24500", "10", "2026-11-18/second"),
        (3, "24500", "10", "2026-11-18/second"),
    ]
