"""OEE of the record over a window, grouped: the reader beside the arithmetic of engine.py.

Closed record intervals and the open one (up to now), clipped to the window and cut at shift
boundaries; the parts made and the scrap and rework reported in it, each reject a startup or a
production reject; each part with the ideal cycle time of its operation: the dispatch list's, else the
site model's part master, else the best cycle observed on the machine (cycles.py), else none (and why).
Every machine's time, parts and rejects are read in one pass each (services/context/record.py
`oee_time`, `oee_parts`, `oee_rejects`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.context.record import CurrentState, RecordReader
from services.context.shifts import Shift, ShiftCalendar
from services.context.state import Interval, MachineState
from services.oee.cycles import best_observed
from services.oee.engine import (
    BEST_OBSERVED,
    DISPATCH,
    NONE,
    PART_MASTER,
    Definition,
    Tally,
    parts_of,
    rejects_of,
    time_in,
    time_of,
)
from services.oee.observed import ObservedCycles, Op, OpenPiece

GROUPS = ("machine", "shift", "day", "job", "operation", "cell", "line", "area", "site")
DAY_MS = 86_400_000

Key = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class Where:
    """What a piece of time or a part belongs to."""

    machine: str
    path: str  # enterprise/site/area/line/cell/machine
    shift: str | None
    day: str
    job: str | None
    operation: str | None

    def key(self, by: Iterable[str]) -> Key:
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
    store: RecordReader,
    calendar: ShiftCalendar | None,
    definition: Definition,
    start_ms: int,
    end_ms: int,
    by: tuple[str, ...] = ("machine",),
    machines: Iterable[str] | None = None,
    timezone: str = "UTC",
    now_ms: int | None = None,
    by_reason: bool = False,
    cycles: ObservedCycles | None = None,
    times_only: bool = False,
) -> dict[Key, Tally]:
    """Tallies of the window by group (`by`: names from GROUPS; () for one total). A machine's open
    interval lasts until `now_ms` (default: its own latest event): a quiet machine still stands.
    `cycles`: the operations' observed cycles kept from earlier reports (default: read afresh).
    `times_only`: the times alone (no parts, ideal cycles or rejects are read)."""
    zone = ZoneInfo(timezone)
    wanted = set(machines) if machines is not None else None
    states = [c for c in store.current_states() if wanted is None or c.machine_id in wanted]
    paths = {c.machine_id: c.path for c in states}
    out: dict[Key, Tally] = {}
    keys: dict[tuple[str, str | None, str, str | None, str | None], Key] = {}

    def day_of(shift: str | None, ts: int) -> str:
        if shift:
            return shift.split("/")[0]
        return datetime.fromtimestamp(ts / 1000, UTC).astimezone(zone).date().isoformat()

    def add(
        m: str, shift: str | None, day: str, job: str | None, operation: str | None, tally: Tally
    ) -> None:
        at = (m, shift, day, job, operation)
        k = keys.get(at)
        if k is None:
            k = keys[at] = Where(m, paths[m], shift, day, job, operation).key(by)
        found = out.get(k)
        if found is None:
            out[k] = found = Tally()
        found += tally

    by_day = "day" in by  # outside every shift a piece's day is its own: one row a piece
    by_op = "job" in by or "operation" in by
    for m, shift, job, operation, state, reason, ms, begins in store.oee_time(
        paths, start_ms, end_ms, by_operation=by_op, by_start=by_day, running_outside=calendar is not None
    ):
        in_shift = calendar is None or shift is not None
        counted = time_in(MachineState(state), reason, ms / 1000, definition, in_shift, by_reason)
        add(m, shift, day_of(shift, begins or start_ms), job, operation, counted)
    for current in states:
        for where, piece in _open_pieces(current, calendar, start_ms, end_ms, now_ms):
            m, shift, job, operation = where
            in_shift = calendar is None or shift is not None
            add(
                m,
                shift,
                day_of(shift, piece.start_ms),
                job,
                operation,
                time_of(piece, definition, in_shift, by_reason),
            )
    if times_only:
        return out
    ideals = _Ideals(store, definition, states, start_ms, end_ms, now_ms, zone, cycles)
    parts = store.oee_parts(paths, start_ms, end_ms, by_start=by_day)
    ideals.prepare((m, job, operation) for m, _, job, operation, _, _ in parts)
    for m, shift, job, operation, made, when in parts:
        add(m, shift, day_of(shift, when or start_ms), job, operation, ideals.parts(m, job, operation, made))
    for m, ts, job, operation, made_in, quantity, made_by, rejected_before in store.oee_rejects(
        paths, start_ms, end_ms
    ):
        # a startup reject: the operation had made no more than its first parts, or none good yet
        startup = job is not None and (
            made_by <= definition.startup_parts or made_by <= rejected_before + quantity
        )
        add(m, made_in, day_of(made_in, ts), job, operation, rejects_of(quantity, startup))
    return out


def _open_pieces(
    current: CurrentState, calendar: ShiftCalendar | None, start_ms: int, end_ms: int, now_ms: int | None
) -> list[tuple[tuple[str, str | None, str | None, str | None], Interval]]:
    """The open interval in the window, with its context as the context service last wrote it (its
    reason now, except idle time inside planned breaks, which is the break's), cut at shifts and breaks."""
    if current.since_ms is None or current.updated_ms is None or current.since_ms >= end_ms:
        return []
    m = current.machine_id
    piece = current.piece or {}
    a = max(current.since_ms, start_ms)
    b = min(max(now_ms or 0, current.updated_ms), end_ms)
    if b <= a:
        return []
    cuts = calendar.split(a, b) if calendar is not None else [(a, b, None)]
    job, operation = piece.get("job"), piece.get("operation")
    now_reason = piece.get("reason")
    if now_reason == "planned_break":  # standing in a break now: before it, not known
        now_reason = "unclassified"
    out = []
    for p_start, p_end, occurrence in cuts:
        key = occurrence.key if occurrence else None
        for c_start, c_end, in_break in _breaks(occurrence, p_start, p_end, now_reason):
            reason = in_break if current.state is MachineState.IDLE else piece.get("reason")
            out.append(((m, key, job, operation), Interval(m, c_start, c_end, current.state, reason)))
    return out


class _Ideals:
    """Each part's ideal cycle time and where it came from: the dispatch list, the part master, the
    best cycle observed on the machine for the same part number and operation (or, without a part
    number, the same job's operation) over `best_observed_days` up to the end of the window (or over
    the window, if longer), else none, with the reason."""

    def __init__(
        self,
        store: RecordReader,
        definition: Definition,
        states: list[CurrentState],
        start_ms: int,
        end_ms: int,
        now_ms: int | None,
        zone: ZoneInfo,
        cycles: ObservedCycles | None,
    ) -> None:
        self.definition = definition
        self.ops = store.operation_ideals()
        self.states = states
        self.end_ms = end_ms
        self.from_ms = min(start_ms, end_ms - round(definition.best_observed_days * DAY_MS))
        self.now_ms = now_ms
        self.zone = zone
        self.cycles = cycles if cycles is not None else ObservedCycles(store)
        self.observed: dict[tuple[str, str, str, str], tuple[float | None, int]] = {}

    def _group(self, m: str, job: str, operation: str) -> tuple[str, str, str, str]:
        """Whose cycles a part's are: the same part number and operation on the machine, or the job's."""
        found = self.ops.get((job, operation))
        part = found[1] if found else ""
        return (m, "part", part, operation) if part else (m, "job", job, operation)

    def prepare(self, rows: Iterable[tuple[str, str | None, str | None]]) -> None:
        """Observe the cycles of every group these parts (machine, job, operation) need."""
        d = self.definition
        if d.best_observed_days <= 0:
            return
        groups: set[tuple[str, str, str, str]] = set()
        for m, job, operation in rows:
            if job is None or operation is None:
                continue
            found = self.ops.get((job, operation))
            if found is not None and (found[2] is not None or found[1] in d.part_cycles_ms):
                continue  # the dispatch list or the part master has it
            groups.add(self._group(m, job, operation))
        if not groups:
            return
        members: dict[tuple[str, str, str, str], list[Op]] = {g: [] for g in groups}
        for (job, operation), (m, part, _) in self.ops.items():
            group = (m, "part", part, operation)
            if part and group in members:
                members[group].append((m, job, operation))
        for m, kind, job, operation in groups:
            if kind == "job":
                members[m, kind, job, operation].append((m, job, operation))
        now = {
            c.machine_id: OpenPiece(
                c.state,
                c.since_ms,
                max(self.now_ms or 0, c.updated_ms or 0),
                (c.piece["job"], c.piece["operation"]) if c.piece and c.piece.get("job") else None,
            )
            for c in self.states
            if c.since_ms is not None
        }
        seen = self.cycles.cycles((op for ops in members.values() for op in ops), now)
        lo, hi = self.from_ms, self.end_ms
        for group, ops in members.items():
            values = [ms for op in ops for ts, ms in seen.get(op, ()) if lo <= ts < hi]
            self.observed[group] = best_observed(
                values, d.best_observed_percentile, d.best_observed_min_cycles
            )

    def parts(self, m: str, job: str | None, operation: str | None, made: int) -> Tally:
        d = self.definition
        if job is None or operation is None:
            return parts_of(
                made, None, source=NONE, what="no operation", note="counted with no operation running"
            )
        what = f"{job}/{operation}"
        found = self.ops.get((job, operation))
        if found is not None and found[2] is not None:
            return parts_of(made, found[2], source=DISPATCH, what=what)
        part = found[1] if found else ""
        if part in d.part_cycles_ms:
            return parts_of(made, d.part_cycles_ms[part], source=PART_MASTER, what=what, note=f"part {part}")
        listed = "no ideal_cycle_s in the dispatch list" if found else "not on the dispatch list"
        master = f"no part master entry for {part}" if part else "no part number"
        if d.best_observed_days <= 0:
            return parts_of(made, None, source=NONE, what=what, note=f"{listed}, {master}, best observed off")
        group = self._group(m, job, operation)
        ideal, n = self.observed.get(group, (None, 0))
        of = f"part {part} operation {operation}" if part else what
        since = datetime.fromtimestamp(self.from_ms / 1000, UTC).astimezone(self.zone).date().isoformat()
        if ideal is None:
            need = d.best_observed_min_cycles
            note = f"{listed}, {master}, {n} cycles of {of} on {m} since {since} ({need} needed)"
            return parts_of(made, None, source=NONE, what=what, note=note)
        note = (
            f"{d.best_observed_percentile:g}th percentile of {n} cycles of {of} on {m} since {since}:"
            f" {ideal / 1000:.1f} s"
        )
        return parts_of(made, round(ideal), source=BEST_OBSERVED, what=what, note=note)


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
