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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby

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
    hold: str | None = field(default=None, compare=False)  # the quality hold open on it
    run_start_ms: int | None = field(default=None, compare=False)  # when the state began (before cuts)


@dataclass(frozen=True, slots=True)
class PartsMade:
    machine_id: str
    timestamp: int
    delta: int
    counter: int
    job: str | None = field(default=None, compare=False)
    operation: str | None = field(default=None, compare=False)
    shift: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SignalValue:
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
    """One machine's current state and signals; `apply` and `lose` return what to record."""

    def __init__(
        self,
        machine_id: str,
        *,
        state: MachineState = MachineState.COMMS_LOSS,
        since_ms: int | None = None,
        counter: int | None = None,
        counter_rollover: int | None = None,
        signals: dict[str, Value] | None = None,
        classifier: Callable[[MachineState, int, int, Mapping[str, Value]], str | None] | None = None,
    ) -> None:
        self.machine_id = machine_id
        self.counter_rollover = counter_rollover
        self.state = state
        self.since_ms = since_ms
        self.counter = counter
        self.signals: dict[str, Value] = dict(signals or {})
        self.classifier = classifier
        self.context: dict[str, Value] = dict(self.signals)  # the signals when this interval began
        self.updated_ms: int | None = since_ms
        self.late_values = 0

    def _transition(self, ts: int, state: MachineState) -> list[Interval]:
        if state == self.state and self.since_ms is not None:
            return []
        closed: list[Interval] = []
        if self.since_ms is not None and ts > self.since_ms:
            closed.append(Interval(self.machine_id, self.since_ms, ts, self.state, self.reason(ts)))
            self.since_ms = ts
        elif self.since_ms is None:
            self.since_ms = ts
        # ts == since: the old state lasted no time at all; the new one replaces it.
        self.state = state
        self.context = dict(self.signals)
        return closed

    def reason(self, end_ms: int) -> str | None:
        """The rule's reason for the current interval, were it to end at `end_ms`."""
        if self.classifier is None or self.since_ms is None:
            return None
        return self.classifier(self.state, self.since_ms, end_ms, self.context)

    def apply(
        self, values: Iterable[SignalValue], *, birth: bool = False
    ) -> tuple[list[Interval], list[PartsMade]]:
        """Apply new signal values in event-time order.

        A birth states every value at once: it takes effect at the latest timestamp among the
        state signals (and never before the current interval began).
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
            for v in group:
                if v.name == Signal.PART_COUNT:
                    made = self._count(ts, v.value)
                    if made is not None:
                        parts.append(made)
                self.signals[v.name] = v.value
            closed += self._transition(ts, derive(self.signals))
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
