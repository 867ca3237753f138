"""A machine's context over time, and the record intervals it makes of its state intervals. Pure.

The state tracker (state.py) says what the machine did: running, idle, setup, down, comms_loss, from
when to when. This module says who and what it did it for: the operation (job and operation number),
the operator logged in, the quality hold open on it, and the shift. A state interval is cut wherever
any of these changes, and at shift and break boundaries, so that every record interval carries one
job, operation, shift and operator. Each piece that is a stop gets a reason, with this precedence:

    operator  a reason set through the API or MQTT for the stop (the whole state interval)
    hold      a quality hold open on the machine, or on the job or operation it runs
    rule      the machine's own signals (reasons.rules) and the planned breaks of the shift calendar
    default   `unclassified`, for an operator to say

Running pieces have no reason; comms_loss pieces have none unless an operator gives one.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from services.context.reasons import DEFAULT_REASON
from services.context.shifts import ShiftCalendar
from services.context.state import Interval, MachineState, PartsMade

OP_ACTIONS = ("start", "pause", "resume", "complete")


@dataclass(frozen=True, slots=True)
class OpEvent:
    """An operation started, paused, resumed or completed on a machine, and what made it so."""

    machine_id: str
    ts: int
    job: str
    operation: str
    action: str  # OP_ACTIONS
    cause: str  # program, confirm, manual, quantity, next_op
    by: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    opened_ms: int
    closed_ms: int | None
    machine_id: str | None
    job: str | None
    operation: str | None
    note: str = ""

    def applies(self, machine_id: str, op: tuple[str, str] | None) -> bool:
        if self.machine_id is not None and self.machine_id != machine_id:
            return False
        if self.job is None:
            return True
        return op is not None and op[0] == self.job and self.operation in (None, op[1])

    def open_at(self, ts: int) -> bool:
        return self.opened_ms <= ts and (self.closed_ms is None or ts < self.closed_ms)


@dataclass
class MachineContext:
    """Everything said about one machine besides its signals, in event time."""

    machine_id: str
    operators: list[tuple[int, str | None]] = field(default_factory=list)  # (when, who; None: logged out)
    ops: list[OpEvent] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)  # every hold of the site; `applies` picks
    overrides: dict[int, str] = field(default_factory=dict)  # state interval start -> operator's reason

    def add_operator(self, ts: int, operator: str | None) -> None:
        bisect.insort(self.operators, (ts, operator), key=lambda e: e[0])

    def add_op(self, event: OpEvent) -> None:
        bisect.insort(self.ops, event, key=lambda e: e.ts)

    def operator_at(self, ts: int) -> str | None:
        i = bisect.bisect_right(self.operators, ts, key=lambda e: e[0])
        return self.operators[i - 1][1] if i else None

    def operation_at(self, ts: int, *, before: bool = False) -> tuple[str, str] | None:
        """The operation running at `ts` (with `before`: just before it, for parts counted at `ts`)."""
        i = (bisect.bisect_left if before else bisect.bisect_right)(self.ops, ts, key=lambda e: e.ts)
        if not i:
            return None
        last = self.ops[i - 1]
        return (last.job, last.operation) if last.action in ("start", "resume") else None

    def hold_at(self, ts: int) -> Hold | None:
        op = self.operation_at(ts)
        return next((h for h in self.holds if h.open_at(ts) and h.applies(self.machine_id, op)), None)

    def changes(self, start_ms: int, end_ms: int) -> set[int]:
        """Times strictly inside (start, end) where the operation, operator or a hold changes."""
        points = itertools.chain(
            (ts for ts, _ in self.operators),
            (e.ts for e in self.ops),
            (h.opened_ms for h in self.holds),
            (h.closed_ms for h in self.holds if h.closed_ms is not None),
        )
        return {t for t in points if start_ms < t < end_ms}


def _calendar_cuts(
    calendar: ShiftCalendar | None, start_ms: int, end_ms: int
) -> tuple[set[int], list[tuple[int, int]]]:
    if calendar is None:
        return set(), []
    cuts: set[int] = set()
    breaks: list[tuple[int, int]] = []
    for shift in calendar.shifts(start_ms, end_ms):
        cuts.update((shift.start_ms, shift.end_ms))
        for _, b_start, b_end in shift.breaks:
            cuts.update((b_start, b_end))
            breaks.append((b_start, b_end))
    return {t for t in cuts if start_ms < t < end_ms}, breaks


def enrich(interval: Interval, ctx: MachineContext, calendar: ShiftCalendar | None) -> list[Interval]:
    """A closed state interval as record intervals: cut where context, shift or break changes, each
    piece with its job, operation, shift, operator, hold and reason (with where the reason came from)."""
    start, end = interval.start_ms, interval.end_ms
    run_start = interval.run_start_ms if interval.run_start_ms is not None else start
    shift_cuts, breaks = _calendar_cuts(calendar, start, end)
    bounds = sorted({start, end} | shift_cuts | ctx.changes(start, end))
    override = ctx.overrides.get(run_start)
    out: list[Interval] = []
    for a, b in itertools.pairwise(bounds):
        op = ctx.operation_at(a)
        hold = ctx.hold_at(a)
        shift = calendar.shift_at(a) if calendar is not None else None
        reason, source = _reason(interval, override, hold, any(s <= a and b <= e for s, e in breaks))
        out.append(
            replace(
                interval,
                start_ms=a,
                end_ms=b,
                reason=reason,
                source=source,
                job=op[0] if op else None,
                operation=op[1] if op else None,
                shift=shift.key if shift else None,
                operator=ctx.operator_at(a),
                hold=hold.hold_id if hold else None,
                run_start_ms=run_start,
            )
        )
    return out


def _reason(
    interval: Interval, override: str | None, hold: Hold | None, in_break: bool
) -> tuple[str | None, str | None]:
    state = interval.state
    if state is MachineState.RUNNING:
        return None, None
    if override is not None:
        return override, "operator"
    if state is MachineState.COMMS_LOSS:
        return None, None
    if hold is not None:
        return "quality_hold", "hold"
    if state is MachineState.IDLE and in_break:
        return "planned_break", "rule"
    if interval.reason is not None and interval.reason != DEFAULT_REASON:
        return interval.reason, "rule"
    return DEFAULT_REASON, "default"


def attribute(
    parts: Iterable[PartsMade], ctx: MachineContext, calendar: ShiftCalendar | None
) -> list[PartsMade]:
    """Part counts with the operation that made them (the one running just before the count went up)
    and the shift they were made in."""
    out = []
    for p in parts:
        op = ctx.operation_at(p.timestamp, before=True)
        shift = calendar.shift_at(p.timestamp) if calendar is not None else None
        out.append(
            replace(
                p,
                job=op[0] if op else None,
                operation=op[1] if op else None,
                shift=shift.key if shift else None,
            )
        )
    return out


def current(
    machine_id: str,
    state: MachineState,
    since_ms: int,
    now_ms: int,
    rule_reason: str | None,
    ctx: MachineContext,
    calendar: ShiftCalendar | None,
) -> Interval:
    """The piece of the open state interval that `now` is in, as the record will have it."""
    end = max(now_ms, since_ms + 1)
    pieces = enrich(Interval(machine_id, since_ms, end, state, rule_reason), ctx, calendar)
    return pieces[-1]
