"""A machine's context over time, and the record intervals it makes of its state intervals. Pure.

The state tracker (state.py) says what the machine did: running, idle, setup, down, comms_loss, from
when to when, and the story of each stop. This module says who and what it did it for: the operation
(job and operation number), the operator logged in, the quality hold open on it, and the shift. A
state interval is cut wherever any of these changes, and at shift and break boundaries, so that every
record interval carries one job, operation, shift and operator. Each piece that is a stop gets a
reason and the evidence for it, with this precedence:

    operator  a reason set through the API or MQTT for the stop (all of it, from the moment the
              machine stopped until it ran again, however it is cut)
    hold      a quality hold on the machine, or on the job or operation it runs, that was open at
              some time in the stop: from then until the machine runs again
    rule      the stop's story and context (reasons.Rules), the planned breaks of the shift calendar
    default   `unclassified`, for an operator to say

Running pieces have no reason; comms_loss pieces have none unless an operator gives one. Pieces of
one stop share its `stop_start_ms`: the API counts a stop once, however many pieces it has.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from services.context.reasons import DEFAULT_REASON, Rules, Seen
from services.context.shifts import Shift, ShiftCalendar
from services.context.state import Interval, MachineState, PartsMade, Story

_DEFAULT_RULES = Rules()

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
    # stop start -> the operator's reason and what the audit says of it ("maria via api at 14:02")
    overrides: dict[int, tuple[str, str]] = field(default_factory=dict)
    verdicts: list[int] = field(default_factory=list)  # when inspection results were reported, sorted
    # the machine's operations and when each was first dispatched (None: before this was recorded)
    dispatched: dict[tuple[str, str], int | None] = field(default_factory=dict)
    # operations taken off the list before they started: from when (None: unknown) until when
    dropped: list[tuple[int | None, int]] = field(default_factory=list)
    _started: dict[tuple[str, str], int] = field(default_factory=dict)
    _op_times: list[int] = field(default_factory=list)  # the times of `ops`, for bisection
    _operator_times: list[int] = field(default_factory=list)  # and of `operators`

    def __post_init__(self) -> None:
        self.operators.sort(key=lambda e: e[0])
        self.ops.sort(key=lambda e: e.ts)
        self._operator_times = [ts for ts, _ in self.operators]
        self._op_times = [e.ts for e in self.ops]
        for e in self.ops:
            if e.action == "start":
                key = (e.job, e.operation)
                self._started[key] = min(e.ts, self._started.get(key, e.ts))

    def add_operator(self, ts: int, operator: str | None) -> None:
        i = bisect.bisect_right(self._operator_times, ts)
        self.operators.insert(i, (ts, operator))
        self._operator_times.insert(i, ts)

    def add_op(self, event: OpEvent) -> None:
        i = bisect.bisect_right(self._op_times, event.ts)
        self.ops.insert(i, event)
        self._op_times.insert(i, event.ts)
        if event.action == "start":
            key = (event.job, event.operation)
            self._started[key] = min(event.ts, self._started.get(key, event.ts))

    def add_verdict(self, ts: int) -> None:
        bisect.insort(self.verdicts, ts)

    def operator_at(self, ts: int) -> str | None:
        i = bisect.bisect_right(self._operator_times, ts)
        return self.operators[i - 1][1] if i else None

    def operation_at(self, ts: int, *, before: bool = False) -> tuple[str, str] | None:
        """The operation running at `ts` (with `before`: just before it, for parts counted at `ts`)."""
        i = (bisect.bisect_left if before else bisect.bisect_right)(self._op_times, ts)
        if not i:
            return None
        last = self.ops[i - 1]
        return (last.job, last.operation) if last.action in ("start", "resume") else None

    def op_start(self, ts: int) -> tuple[int, str] | None:
        """When the operation running at `ts` started, and what started it (program, confirm, ...)."""
        i = bisect.bisect_right(self._op_times, ts)
        key = self.operation_at(ts)
        for j in range(i - 1, -1, -1):
            e = self.ops[j]
            if (e.job, e.operation) == key and e.action == "start":
                return e.ts, e.cause
        return None

    def hold_at(self, ts: int) -> Hold | None:
        op = self.operation_at(ts)
        return next((h for h in self.holds if h.open_at(ts) and h.applies(self.machine_id, op)), None)

    def hold_in_stop(self, stop_start: int, ts: int) -> Hold | None:
        """The hold that was open at some time from `stop_start` to `ts` (so it holds the stop from
        then on, even after it closed, until the machine runs again)."""
        for h in self.holds:
            overlaps = h.opened_ms <= ts and (h.closed_ms is None or h.closed_ms > stop_start)
            if overlaps and h.applies(self.machine_id, self.operation_at(max(stop_start, h.opened_ms))):
                return h
        return None

    def verdict_after(self, ts: int) -> int | None:
        i = bisect.bisect_left(self.verdicts, ts)
        return self.verdicts[i] if i < len(self.verdicts) else None

    def no_work(self, ts: int) -> tuple[str, str, int] | bool | None:
        """At `ts`: False when work was there (running or queued) or nothing was ever dispatched here;
        else the operation completed last before (job, operation, when), or True if none."""
        if not (self.dispatched or self.dropped) or self.operation_at(ts) is not None:
            return False
        if any((since is None or since <= ts) and ts < until for since, until in self.dropped):
            return False  # work that was taken off later was still there
        if len(self._started) < len(self.dispatched):  # something dispatched was never started...
            queued = [w for k, w in self.dispatched.items() if k not in self._started]
            if any(w is None or w <= ts for w in queued):  # ...and had come by then
                return False
        came = [*self.dispatched.values(), *(since for since, _ in self.dropped)]
        if None not in came and min(c for c in came if c is not None) > ts:
            return False  # the machine had never had work dispatched by then
        for key, when in self.dispatched.items():
            if (when is None or when <= ts) and self._started.get(key, ts + 1) > ts:
                return False  # queued
        i = bisect.bisect_right(self._op_times, ts)
        if i and self.ops[i - 1].action == "pause":
            return False  # paused: the work is there
        last = next((self.ops[j] for j in range(i - 1, -1, -1) if self.ops[j].action == "complete"), None)
        return (last.job, last.operation, last.ts) if last is not None else True

    def changes(self, start_ms: int, end_ms: int, *, stop: bool = False) -> set[int]:
        """Times strictly inside (start, end) where the operation, operator or a hold changes (for a
        stop also: where an inspection verdict comes or work is dispatched)."""

        def inside(times: list[int]) -> list[int]:
            return times[bisect.bisect_right(times, start_ms) : bisect.bisect_left(times, end_ms)]

        points = itertools.chain(
            inside(self._operator_times),
            inside(self._op_times),
            (h.opened_ms for h in self.holds),
            (h.closed_ms for h in self.holds if h.closed_ms is not None),
        )
        if stop:
            points = itertools.chain(
                points,
                inside(self.verdicts),
                (d for d in self.dispatched.values() if d is not None),
                (t for span in self.dropped for t in span if t is not None),
            )
        return {t for t in points if start_ms < t < end_ms}


def _calendar_cuts(
    calendar: ShiftCalendar | None, start_ms: int, end_ms: int
) -> tuple[set[int], list[tuple[int, int]], list[Shift]]:
    """Shift and break edges inside (start, end), the breaks, and the shifts that overlap it."""
    if calendar is None:
        return set(), [], []
    cuts: set[int] = set()
    breaks: list[tuple[int, int]] = []
    shifts = calendar.shifts(start_ms, end_ms)
    for shift in shifts:
        cuts.update((shift.start_ms, shift.end_ms))
        for _, b_start, b_end in shift.breaks:
            cuts.update((b_start, b_end))
            breaks.append((b_start, b_end))
    return {t for t in cuts if start_ms < t < end_ms}, breaks, shifts


def enrich(
    interval: Interval, ctx: MachineContext, calendar: ShiftCalendar | None, rules: Rules | None = None
) -> list[Interval]:
    """A closed state interval as record intervals: cut where context, shift or break changes, each
    piece with its job, operation, shift, operator, hold and reason (with where the reason came from
    and the evidence)."""
    rules = rules or _DEFAULT_RULES
    start, end, state = interval.start_ms, interval.end_ms, interval.state
    run_start = interval.run_start_ms if interval.run_start_ms is not None else start
    is_stop = state is not MachineState.RUNNING and state is not MachineState.COMMS_LOSS
    stop_start = interval.stop_start_ms if is_stop and interval.stop_start_ms is not None else run_start
    shift_cuts, breaks, shifts = _calendar_cuts(calendar, start, end)
    bounds = sorted({start, end} | shift_cuts | ctx.changes(start, end, stop=is_stop))
    # an operator's reason is kept by the stop's start; one from before stops had their own identity is
    # kept by its state's start, and holds for that state
    override = ctx.overrides.get(run_start) or ctx.overrides.get(stop_start)
    story = interval.story
    last = len(bounds) - 2
    out: list[Interval] = []
    for n, (a, b) in enumerate(itertools.pairwise(bounds)):
        op = ctx.operation_at(a)
        hold = ctx.hold_in_stop(stop_start, a) if is_stop else ctx.hold_at(a)
        shift = next((sh for sh in shifts if sh.start_ms <= a < sh.end_ms), None)
        if state is MachineState.RUNNING:
            reason, source, evidence = None, None, None
        elif override is not None:
            reason, source, evidence = override[0], "operator", override[1]
        elif not is_stop:
            reason, source, evidence = None, None, None
        elif hold is not None:
            reason, source = "quality_hold", "hold"
            evidence = f"hold {hold.hold_id} opened {rules.hm(hold.opened_ms)}" + (
                f": {hold.note}" if hold.note else ""
            )
        else:
            given = None
            if story is not None:
                memory = interval.memory or story
                if state is MachineState.IDLE:
                    in_break = any(s <= a and b <= e for s, e in breaks)
                    seen = _seen(ctx, memory.first_part_ms, a, op, in_break, rules)
                else:
                    seen = Seen(op)
                given = rules.classify(state, story, memory, end - run_start, a, seen)
            elif state is MachineState.IDLE and any(s <= a and b <= e for s, e in breaks):
                # a record from before stories were kept, recomputed: the break rule still holds
                given = rules.classify(state, Story(), Story(), end - run_start, a, Seen(op, True))
            if given is not None:
                reason, source, evidence = given[0], "rule", given[1]
            else:
                reason, source, evidence = (
                    DEFAULT_REASON,
                    "default",
                    "no rule applies: for an operator to say",
                )
        out.append(
            Interval(
                interval.machine_id,
                a,
                b,
                state,
                reason,
                source,
                op[0] if op else None,
                op[1] if op else None,
                shift.key if shift else None,
                ctx.operator_at(a),
                hold.hold_id if hold else None,
                run_start,
                evidence,
                stop_start if is_stop or override is not None else None,
                story if n == last else None,
                interval.memory if n == last else None,
            )
        )
    return out


def _seen(
    ctx: MachineContext,
    first_part_ms: int | None,
    ts: int,
    op: tuple[str, str] | None,
    in_break: bool,
    rules: Rules,
) -> Seen:
    verdict = ctx.verdict_after(first_part_ms) if first_part_ms is not None else None
    no_work = ctx.no_work(ts) if ctx.dispatched or ctx.dropped else False
    text = None
    if no_work is True:
        text = f"nothing dispatched to {ctx.machine_id} or queued"
    elif no_work:
        job, operation, done = no_work
        text = (
            f"nothing dispatched to {ctx.machine_id} or queued"
            f" since {job}/{operation} completed at {rules.hm(done)}"
        )
    return Seen(op, in_break, verdict, text, ctx.op_start(ts) if op is not None else None)


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
    story: Story,
    ctx: MachineContext,
    calendar: ShiftCalendar | None,
    rules: Rules | None = None,
    memory: Story | None = None,
) -> Interval:
    """The open state interval at `now` as the record will have it: a piece of it ending at `now` with
    the job, operation, shift, operator, hold and reason (and evidence) of that moment. Its start is the
    last millisecond before `now`, not where the record's piece will begin, so that a machine idle for
    weeks costs no more than one idle for a minute."""
    end = max(now_ms, since_ms + 1)
    interval = Interval(
        machine_id,
        end - 1,
        end,
        state,
        run_start_ms=since_ms,
        stop_start_ms=story.stop_start_ms,
        story=story,
        memory=memory,
    )
    return enrich(interval, ctx, calendar, rules)[-1]
