"""OEE of the record over a window, grouped: the reader beside the arithmetic of engine.py.

Closed record intervals and the open one (up to the record's latest event time), clipped to the
window and cut at shift boundaries; the parts made and the scrap and rework reported in it; each part
with the ideal cycle time of its operation (the dispatch list's, else the site model's part master).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.context.record import RecordStore
from services.context.shifts import Shift, ShiftCalendar
from services.context.state import Interval, MachineState
from services.oee.engine import Definition, Tally, parts_of, time_in, time_of

GROUPS = ("machine", "shift", "day", "job", "operation", "cell", "line", "area", "site")


@dataclass(frozen=True, slots=True)
class Where:
    """What a piece of time or a part belongs to."""

    machine: str
    path: str  # enterprise/site/area/line/cell/machine
    shift: str | None
    day: str
    job: str | None
    operation: str | None

    def key(self, by: Iterable[str]) -> tuple[tuple[str, str | None], ...]:
        area, line, cell = self.path.split("/")[2:5]
        values: dict[str, str | None] = {
            "machine": self.machine,
            "shift": self.shift,
            "day": self.day,
            "job": self.job,
            "operation": f"{self.job}/{self.operation}" if self.job else None,
            "cell": f"{area}/{line}/{cell}",
            "line": f"{area}/{line}",
            "area": area,
            "site": "/".join(self.path.split("/")[:2]),
        }
        return tuple((g, values[g]) for g in by)


def oee(
    store: RecordStore,
    calendar: ShiftCalendar | None,
    definition: Definition,
    start_ms: int,
    end_ms: int,
    by: tuple[str, ...] = ("machine",),
    machines: Iterable[str] | None = None,
    timezone: str = "UTC",
    now_ms: int | None = None,
    by_reason: bool = False,
) -> dict[tuple[tuple[str, str | None], ...], Tally]:
    """Tallies of the window by group (`by`: names from GROUPS; () for one total). A machine's open
    interval lasts until `now_ms` (default: its own latest event): a quiet machine still stands. The
    record's closed time and parts are summed in the store (by shift, job, operation, state, reason)."""
    zone = ZoneInfo(timezone)
    wanted = set(machines) if machines is not None else None
    ops = {o.key: o for o in store.operations()}
    out: dict[tuple[tuple[str, str | None], ...], Tally] = {}

    def day_of(shift: str | None, ts: int) -> str:
        if shift:
            return shift.split("/")[0]
        return datetime.fromtimestamp(ts / 1000, UTC).astimezone(zone).date().isoformat()

    keys: dict[Where, tuple[tuple[str, str | None], ...]] = {}

    def add(where: Where, tally: Tally) -> None:
        k = keys.get(where)
        if k is None:
            k = keys[where] = where.key(by)
        found = out.get(k)
        if found is None:
            out[k] = found = Tally()
        found += tally

    for current in store.current_states():
        m = current.machine_id
        if wanted is not None and m not in wanted:
            continue
        path = current.path
        by_day = "day" in by  # outside every shift a piece's day is its own: one row a piece
        rows = store.time_totals(m, start_ms, end_ms, running_outside=calendar is not None, by_start=by_day)
        for shift, job, operation, state, reason, ms, begins in rows:
            where = Where(m, path, shift, day_of(shift, begins or start_ms), job, operation)
            in_shift = calendar is None or shift is not None
            counted = time_in(MachineState(state), reason, ms / 1000, definition, in_shift, by_reason)
            add(where, counted)
        if current.since_ms is not None and current.updated_ms is not None and current.since_ms < end_ms:
            piece = current.piece or {}
            # the open interval, with its context as the context service last wrote it
            # (its reason now, except idle time inside planned breaks, which is the break's)
            a = max(current.since_ms, start_ms)
            b = min(max(now_ms or 0, current.updated_ms), end_ms)
            cuts = calendar.split(a, b) if calendar is not None else [(a, b, None)]
            for p_start, p_end, occurrence in cuts if b > a else []:
                key = occurrence.key if occurrence else None
                job, operation = piece.get("job"), piece.get("operation")
                where = Where(m, path, key, day_of(key, p_start), job, operation)
                in_shift = calendar is None or occurrence is not None
                now_reason = piece.get("reason")
                if now_reason == "planned_break":  # standing in a break now: before it, not known
                    now_reason = "unclassified"
                for c_start, c_end, in_break in _breaks(occurrence, p_start, p_end, now_reason):
                    idle = current.state is MachineState.IDLE
                    reason = in_break if idle else piece.get("reason")
                    open_piece = Interval(m, c_start, c_end, current.state, reason)
                    add(where, time_of(open_piece, definition, in_shift, by_reason))
        for shift, job, operation, made, when in store.part_totals(m, start_ms, end_ms, by_start=by_day):
            op = ops.get((job, operation)) if job and operation else None
            ideal = _ideal(
                op.ideal_cycle_ms if op else None, op.part_number if op else None, definition.part_cycles_ms
            )
            add(Where(m, path, shift, day_of(shift, when or start_ms), job, operation), parts_of(made, ideal))
        for ts, job, operation, made_in, quantity in store.rejects(m, start_ms, end_ms):
            where = Where(m, path, made_in, day_of(made_in, ts), job, operation)
            add(where, Tally(rejected=quantity))
    return out


def _breaks(
    occurrence: Shift | None, start_ms: int, end_ms: int, reason: str | None
) -> list[tuple[int, int, str | None]]:
    """[start, end) of a shift cut at its planned breaks: the break's time is `planned_break`."""
    edges = {start_ms, end_ms}
    breaks = occurrence.breaks if occurrence is not None else ()
    for _, b0, b1 in breaks:
        edges.update(t for t in (b0, b1) if start_ms < t < end_ms)
    cuts = sorted(edges)
    return [
        (x, y, "planned_break" if any(b0 <= x and y <= b1 for _, b0, b1 in breaks) else reason)
        for x, y in itertools.pairwise(cuts)
    ]


def _ideal(dispatched: int | None, part_number: str | None, parts: Mapping[str, int]) -> int | None:
    if dispatched is not None:
        return dispatched
    return parts.get(part_number) if part_number else None
