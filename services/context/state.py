"""Machine state on event time, from controller signals. Pure: no sockets, no storage.

The rules, first match wins:
  comms_loss  no data: the device or its edge node is dead, or execution/mode is unknown or bad
  down        emergency stop pressed, or an alarm is active (alarm_code != 0)
  setup       the controller is in MANUAL, MDI or EDIT mode
  running     AUTOMATIC mode and execution ACTIVE
  idle        AUTOMATIC mode and not executing (READY, STOPPED, INTERRUPTED, FEED_HOLD)

Intervals are closed on the timestamps the values carry, never on arrival time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, NamedTuple

from uns.site import Signal

Value = bool | int | float | str | bytes | None


class MachineState(enum.StrEnum):
    RUNNING = "running"
    IDLE = "idle"
    SETUP = "setup"
    DOWN = "down"
    COMMS_LOSS = "comms_loss"


_SETUP_MODES = frozenset({"MANUAL", "MDI", "EDIT"})
STATE_SIGNALS = (Signal.EXECUTION, Signal.MODE, Signal.ALARM_CODE, Signal.ESTOP)
COUNTER_MAX = 2**32 - 1


def derive(signals: Mapping[str, Value]) -> MachineState:
    execution, mode = signals.get(Signal.EXECUTION), signals.get(Signal.MODE)
    if execution is None or mode is None:
        return MachineState.COMMS_LOSS
    if signals.get(Signal.ESTOP) is True or (signals.get(Signal.ALARM_CODE) or 0) != 0:
        return MachineState.DOWN
    if mode in _SETUP_MODES:
        return MachineState.SETUP
    if execution == "ACTIVE":
        return MachineState.RUNNING
    return MachineState.IDLE


class Story(NamedTuple):
    """What the machine's own signals said before and at the start of an interval, kept by the tracker
    on event time: the facts the rules look at when they classify a stop (services/context/reasons.py).

    A stop runs from the moment the machine stopped until it runs again (or its data is lost), across
    every state it goes through (down, setup, idle); its first-part facts run from a program change.
    """

    stop_start_ms: int | None = None  # when the stop this interval is part of began (None: running)
    fault_ms: int | None = None  # an alarm or emergency stop earlier in this stop: when it began...
    fault: str | None = None  # ...and what: "alarm 2105 TOOL BREAKAGE DETECTED", "emergency stop"
    setup_ms: int | None = None  # setup mode earlier in this stop: since when
    program: str | None = None  # the program loaded
    program_ms: int | None = None  # when it replaced another one (None: it was there when we came)
    previous_program: str | None = None
    parts: int = 0  # parts counted since the program was loaded
    counts: int = 0  # how often the counter went up since then
    first_part_ms: int | None = None  # when the first of them was counted
    ran: bool = False  # a cycle ran since the program was loaded
    ran_since_part: bool = False  # a cycle ran since the last part was counted
    min_override: float | None = None  # the lowest feed override while running since then (percent)
    feed_holds: int = 0  # feed holds while running since then
    checks: bool = False  # single block or optional stop on while running since then
    execution: str | None = None  # at the start of this interval
    mode: str | None = None
    alarm: str | None = None  # what stopped it, when this interval is down
    program_seen_ms: int | None = None  # when the program was first seen, if it was there when we came

    def to_json(self) -> list[Any]:
        """Its values in field order (fields are only ever added at the end)."""
        return list(self)

    @classmethod
    def from_json(cls, doc: list[Any] | Mapping[str, Any] | None) -> Story:
        if isinstance(doc, list):
            return cls(*doc[: len(cls._fields)])
        return cls(**{k: v for k, v in (doc or {}).items() if k in cls._fields})


_EMPTY_STORY = Story()


def fault_of(signals: Mapping[str, Value]) -> str:
    """What stopped a machine that is down, in words."""
    if signals.get(Signal.ESTOP) is True:
        return "emergency stop"
    code, text = signals.get(Signal.ALARM_CODE), signals.get(Signal.ALARM_TEXT)
    return f"alarm {code!s}" + (f" {text!s}" if text else "")


@dataclass(frozen=True, slots=True)
class Interval:
    machine_id: str
    start_ms: int
    end_ms: int
    state: MachineState
    # Context (services/context/timeline.py); not part of what makes two intervals equal.
    reason: str | None = field(default=None, compare=False)  # why it stood: services/context/reasons.py
    source: str | None = field(default=None, compare=False)  # where the reason came from: operator, hold...
    job: str | None = field(default=None, compare=False)
    operation: str | None = field(default=None, compare=False)
    shift: str | None = field(default=None, compare=False)  # "<production date>/<shift name>"
    operator: str | None = field(default=None, compare=False)
    hold: str | None = field(
        default=None, compare=False
    )  # the quality hold open on it (or that caused the stop)
    run_start_ms: int | None = field(default=None, compare=False)  # when the state began (before cuts)
    evidence: str | None = field(default=None, compare=False)  # what the reason's source went by
    stop_start_ms: int | None = field(default=None, compare=False)  # when the stop it is part of began
    story: Story | None = field(default=None, compare=False, repr=False)  # the facts at the state's start
    memory: Story | None = field(default=None, compare=False, repr=False)  # the tracker's, when it closed

    @property
    def stop_of(self) -> int:
        """The start of the stop this piece is part of (of its state, for a piece that is no stop)."""
        if self.stop_start_ms is not None:
            return self.stop_start_ms
        return self.run_start_ms if self.run_start_ms is not None else self.start_ms


@dataclass(frozen=True, slots=True)
class PartsMade:
    machine_id: str
    timestamp: int
    delta: int
    counter: int
    job: str | None = field(default=None, compare=False)
    operation: str | None = field(default=None, compare=False)
    shift: str | None = field(default=None, compare=False)


class SignalValue(NamedTuple):
    """One value of a signal at its source timestamp (a tuple: the host makes one per metric)."""

    name: str
    value: Value  # None: unknown (null or bad quality)
    timestamp: int


LOST = "*lost*"  # the name of a comms-loss marker in the event log


def birth_time(values: list[SignalValue]) -> int:
    """When a birth's values take effect: the latest change among the state signals it carries."""
    stamps = [v.timestamp for v in values if v.name in STATE_SIGNALS] or [v.timestamp for v in values]
    return max(stamps)


def replay(tracker: MachineTracker, events: Iterable[SignalValue]) -> tuple[list[Interval], list[PartsMade]]:
    """Apply logged events (values and LOST markers) in time order, as the live service did."""
    closed: list[Interval] = []
    parts: list[PartsMade] = []
    ordered = sorted(events, key=lambda e: (e.timestamp, e.name != LOST))
    for ts, group in groupby(ordered, key=lambda e: e.timestamp):
        batch = list(group)
        if batch[0].name == LOST:
            closed += tracker.lose(ts)
            batch = [e for e in batch if e.name != LOST]
        if batch:
            more, made = tracker.apply(batch)
            closed += more
            parts += made
    return closed, parts


class MachineTracker:
    """One machine's current state, signals and story; `apply` and `lose` return what to record."""

    def __init__(
        self,
        machine_id: str,
        *,
        state: MachineState = MachineState.COMMS_LOSS,
        since_ms: int | None = None,
        counter: int | None = None,
        counter_rollover: int | None = None,
        signals: dict[str, Value] | None = None,
        story: Story | None = None,
        story_at_start: Story | None = None,
    ) -> None:
        self.machine_id = machine_id
        self.counter_rollover = counter_rollover
        self.state = state
        self.since_ms = since_ms
        self.counter = counter
        self.signals: dict[str, Value] = dict(signals or {})
        self.story = story or _EMPTY_STORY  # as of now
        self.story_at_start = story_at_start or self.story  # as of the start of the current interval
        self.updated_ms: int | None = since_ms
        self.late_values = 0

    def _transition(self, ts: int, state: MachineState, memory: Story | None = None) -> list[Interval]:
        """Enter `state` at `ts`; `memory`: the story before the values at `ts` (what a replay that
        starts at `ts` begins with)."""
        if state == self.state and self.since_ms is not None:
            return []
        closed: list[Interval] = []
        previous = self.state
        if self.since_ms is not None and ts > self.since_ms:
            closed.append(
                Interval(
                    self.machine_id,
                    self.since_ms,
                    ts,
                    previous,
                    stop_start_ms=self.story_at_start.stop_start_ms,
                    story=self.story_at_start,
                    memory=memory or self.story,
                )
            )
        self.story = self._next_story(ts, previous if closed else None, state)
        self.story_at_start = self.story
        if self.since_ms is None or closed:
            self.since_ms = ts
        # ts == since: the old state lasted no time at all; the new one replaces it.
        self.state = state
        return closed

    def _start_facts(self, state: MachineState) -> dict[str, Any]:
        sig = self.signals
        execution, mode = sig.get(Signal.EXECUTION), sig.get(Signal.MODE)
        return {
            "execution": execution if isinstance(execution, str) else None,
            "mode": mode if isinstance(mode, str) else None,
            "alarm": fault_of(sig) if state is MachineState.DOWN else None,
        }

    def _next_story(self, ts: int, previous: MachineState | None, state: MachineState) -> Story:
        """The story as the machine enters `state` at `ts` (`previous`: the state that just ended).
        A comms loss does not end a stop: when the data comes back and the machine still stands, it is
        the same stop (a restart of the service or a broker outage does not cut it in two)."""
        s = self.story
        facts = self._start_facts(state)
        execution = facts["execution"]
        if state is MachineState.RUNNING:
            facts.update(stop_start_ms=None, fault_ms=None, fault=None, setup_ms=None)
            facts.update(ran=True, ran_since_part=True)
            return s._replace(**facts)
        if state is MachineState.COMMS_LOSS:
            return s._replace(**facts)
        if s.stop_start_ms is None:  # the machine stopped
            facts.update(stop_start_ms=ts, fault_ms=None, fault=None, setup_ms=None)
            if previous is MachineState.RUNNING and execution == "FEED_HOLD":
                facts["feed_holds"] = s.feed_holds + 1
        elif previous is MachineState.DOWN and s.fault_ms is None:
            facts.update(fault_ms=self.since_ms, fault=self.story_at_start.alarm)
        elif previous is MachineState.SETUP and s.setup_ms is None:
            facts["setup_ms"] = self.since_ms
        return s._replace(**facts)

    def _program(self, ts: int, value: Value) -> None:
        """A program value: a change from another program begins a new first part."""
        if not isinstance(value, str) or not value or value == self.story.program:
            return
        if self.story.program is None:  # the first we hear of: loaded before we came
            self.story = self.story._replace(program=value, program_seen_ms=ts)
            return
        self.story = self.story._replace(
            program=value,
            program_ms=ts,
            previous_program=self.story.program,
            parts=0,
            counts=0,
            first_part_ms=None,
            ran=False,
            ran_since_part=False,
            min_override=None,
            feed_holds=0,
            checks=False,
        )

    def _while_running(self) -> None:
        s, sig = self.story, self.signals
        override = sig.get(Signal.FEED_OVERRIDE)
        number = isinstance(override, int | float) and not isinstance(override, bool)
        if number and (s.min_override is None or float(override) < s.min_override):  # type: ignore[arg-type]
            s = s._replace(min_override=float(override))  # type: ignore[arg-type]
        if not s.ran_since_part or not s.ran:  # a part counted, or a program loaded, while it cuts
            s = s._replace(ran_since_part=True, ran=True)
        if not s.checks and (sig.get(Signal.SINGLE_BLOCK) is True or sig.get(Signal.OPTIONAL_STOP) is True):
            s = s._replace(checks=True)
        self.story = s

    def apply(
        self, values: Iterable[SignalValue], *, birth: bool = False
    ) -> tuple[list[Interval], list[PartsMade]]:
        """Apply new signal values in event-time order.

        A birth states every value at once: it takes effect at the latest timestamp among the
        state signals (and never before the current interval began). Parts counted at the moment the
        program changes belong to the program before.
        """
        values = sorted(values, key=lambda v: v.timestamp)
        if birth and values:
            at = birth_time(values)
            values = [SignalValue(v.name, v.value, at) for v in values]
        closed: list[Interval] = []
        parts: list[PartsMade] = []
        for stamp, group in groupby(values, key=lambda v: v.timestamp):
            ts = stamp
            if self.since_ms is not None and ts < self.since_ms:
                self.late_values += 1
                ts = self.since_ms
            program: Value = None
            before = self.story
            for v in group:
                if v.name == Signal.PART_COUNT:
                    made = self._count(ts, v.value)
                    if made is not None:
                        parts.append(made)
                        s = self.story
                        first = s.first_part_ms if s.parts else ts
                        self.story = s._replace(
                            parts=s.parts + made.delta,
                            counts=s.counts + 1,
                            first_part_ms=first,
                            ran_since_part=False,
                        )
                elif v.name == Signal.PROGRAM:
                    program = v.value
                self.signals[v.name] = v.value
            if program is not None:
                self._program(ts, program)
            now_closed = self._transition(ts, derive(self.signals), before)
            closed += now_closed
            if not now_closed and ts == self.since_ms:
                # more values at the instant this interval began (another message with the same
                # stamp): they are part of how it began, as a replay of them in one group has it
                self.story = self.story._replace(**self._start_facts(self.state))
                self.story_at_start = self.story
            if self.state is MachineState.RUNNING:
                self._while_running()
            self.updated_ms = max(ts, self.updated_ms or ts)
        return closed, parts

    def _count(self, ts: int, value: Value) -> PartsMade | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
        last, self.counter = self.counter, value
        if last is None or value == last:
            return None
        if value > last:
            delta = value - last
        elif self.counter_rollover and last - value > self.counter_rollover // 2:
            # it wrapped past its top (a 16-bit PLC register): count across the wrap
            delta = value + self.counter_rollover - last
        else:
            # it was reset: what it shows now was made since
            delta = value
        return PartsMade(self.machine_id, ts, delta, value) if delta > 0 else None

    def lose(self, ts: int) -> list[Interval]:
        """The machine's data is gone (device or node death, host lost the broker): comms_loss."""
        self.signals.clear()
        if self.since_ms is not None:
            ts = max(ts, self.since_ms)
        return self._transition(ts, MachineState.COMMS_LOSS)
