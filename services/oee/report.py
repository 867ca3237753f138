"""OEE of the record over a window, grouped: the reader beside the arithmetic of engine.py.

Closed record intervals and the open one (up to the record's latest event time), clipped to the
window and cut at shift boundaries; the parts made and the scrap and rework reported in it; each part
with the ideal cycle time of its operation (the dispatch list's, else the site model's part master).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.context.record import RecordStore
from services.context.shifts import ShiftCalendar
from services.context.state import Interval
from services.oee.engine import Definition, Tally, parts_of, time_of

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
) -> dict[tuple[tuple[str, str | None], ...], Tally]:
    """Tallies of the window by group (`by`: names from GROUPS; () for one total). A machine's open
    interval lasts until `now_ms` (default: its own latest event): a quiet machine still stands."""
    zone = ZoneInfo(timezone)
    wanted = set(machines) if machines is not None else None
    ops = {o.key: o for o in store.operations()}
    out: dict[tuple[tuple[str, str | None], ...], Tally] = {}

    def day_of(shift: str | None, ts: int) -> str:
        return (
            shift.split("/")[0]
            if shift
            else datetime.fromtimestamp(ts / 1000, UTC).astimezone(zone).date().isoformat()
        )

    def add(where: Where, tally: Tally) -> None:
        k = where.key(by)
        out[k] = out.get(k, Tally()) + tally

    for current in store.current_states():
        m = current.machine_id
        if wanted is not None and m not in wanted:
            continue
        pieces = store.intervals(m, start_ms, end_ms)
        if current.since_ms is not None and current.updated_ms is not None and current.since_ms < end_ms:
            piece = current.piece or {}
            pieces.append(  # the open interval, with its context as the context service last wrote it
                Interval(
                    m,
                    current.since_ms,
                    max(now_ms or 0, current.updated_ms, current.since_ms + 1),
                    current.state,
                    piece.get("reason"),
                    job=piece.get("job"),
                    operation=piece.get("operation"),
                )
            )
        for i in pieces:
            a, b = max(i.start_ms, start_ms), min(i.end_ms, end_ms)
            if b <= a:
                continue
            cuts = calendar.split(a, b) if calendar is not None else [(a, b, None)]
            for p_start, p_end, shift in cuts:
                key = shift.key if shift else None
                where = Where(m, current.path, key, day_of(key, p_start), i.job, i.operation)
                in_shift = calendar is None or shift is not None
                add(where, time_of(replace(i, start_ms=p_start, end_ms=p_end), definition, in_shift))
        for p in store.parts(m, start_ms, end_ms):
            op = ops.get((p.job, p.operation)) if p.job and p.operation else None
            ideal = _ideal(
                op.ideal_cycle_ms if op else None, op.part_number if op else None, definition.part_cycles_ms
            )
            add(
                Where(m, current.path, p.shift, day_of(p.shift, p.timestamp), p.job, p.operation),
                parts_of(p.delta, ideal),
            )
        for ts, job, operation, made_in, quantity in store.rejects(m, start_ms, end_ms):
            where = Where(m, current.path, made_in, day_of(made_in, ts), job, operation)
            add(where, Tally(rejected=quantity))
    return out


def _ideal(dispatched: int | None, part_number: str | None, parts: Mapping[str, int]) -> int | None:
    if dispatched is not None:
        return dispatched
    return parts.get(part_number) if part_number else None
