"""The historian: follows the record and sends it to InfluxDB (docs/historian.md).

Each poll reads, per machine, what the record appended since the last one (closed intervals by their
start, part counts by time, signal values by time with a short look back for values that arrived
late), the current states, and the record's revisions (a rebuild after a backfill, an operator's
reason, a late verdict or hold: the past from some time on was rewritten). A revision sends that
stretch again; a point whose tags the rewrite changed is taken back (`lines.retraction`). The OEE and
the losses of each machine and shift are written for the current shift every minute and again for
every shift a revision touches. Points are written under the same series and time however often they
are sent: a backfill or a recomputation overwrites, never duplicates.

Where it is in the record is saved (services/historian/memory.py) only once what it had sent by then
is written, so a restart, or an InfluxDB that was away for a day, sends again from there: nothing is
lost, and what is sent twice overwrites itself.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from services.context.reasons import Reason
from services.context.record import CurrentState, RecordReader
from services.context.shifts import ShiftCalendar
from services.context.state import MachineState
from services.historian.lines import Encoder, line, machine_tags, retraction
from services.historian.memory import Cursor, Memory
from services.oee.engine import Definition
from services.oee.observed import ObservedCycles
from services.oee.report import oee
from uns.site import Site

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
_PART_WINDOW_MS = 7 * DAY_MS  # part counts read at once, at most (a backlog goes by weeks)
_TRACKED = ("state_interval", "machine_state", "part_count")


class Sink(Protocol):
    """Where lines go (services.historian.writer.InfluxWriter)."""

    def put(self, lines: list[str]) -> int: ...

    def room(self) -> int: ...

    def settled(self) -> int: ...

    def health(self) -> Mapping[str, int]: ...


@dataclass(slots=True)
class _Snapshot:
    cursors: dict[str, Cursor]
    revision: int
    written: list[tuple[str, str, int, str]]
    put_total: int


class Historian:
    def __init__(
        self,
        site: Site,
        store: RecordReader,
        sink: Sink,
        memory: Memory,
        *,
        calendar: ShiftCalendar | None,
        taxonomy: Mapping[str, Reason],
        definition: Definition,
        now_ms: Callable[[], int],
        page: int = 5_000,
        signal_lookback_ms: int = 5_000,
        oee_every_ms: int = 60_000,
        health_every_ms: int = 60_000,
        keep_ms: int = 7 * DAY_MS,
    ) -> None:
        self.site = site
        self.store = store
        self.sink = sink
        self.memory = memory
        self.calendar = calendar
        self.encoder = Encoder(taxonomy, definition)
        self.cycles = ObservedCycles(store)  # the best observed cycles, kept between minutes
        self.definition = definition
        self.now_ms = now_ms
        self.page = page
        self.lookback = signal_lookback_ms
        self.oee_every = oee_every_ms
        self.health_every = health_every_ms
        self.keep_ms = keep_ms
        self.where = {m.id: machine_tags(m.path) for m in site.machines}
        saved = memory.cursors()
        self.cursors = {m: saved.get(m) or self._first(m) for m in self.where}
        last = memory.revision()
        # a new memory starts from the whole record: revisions before now are in what it reads
        self.revision = last if last is not None else store.last_revision()
        self._sent: dict[str, set[tuple[int, str]]] = {m: set() for m in self.where}
        self._current: dict[str, str] = {}
        self._written: list[tuple[str, str, int, str]] = []
        self._pending: _Snapshot | None = None
        self._put_total = 0
        self._last_oee: int | None = None
        self._last_health: int | None = None
        self._oee_due = True
        self._host = socket.gethostname()

    def _first(self, machine_id: str) -> Cursor:
        """A machine new to the historian: all of its record, the OEE from its first interval."""
        first = self.store.intervals_from(machine_id, 0, 1)
        start = first[0].start_ms if first else self.now_ms()
        return Cursor(interval_ms=start - 1, part_ms=start - 1, signal_ms=0, oee_ms=start)

    # -- one round -----------------------------------------------------------------------------
    def poll(self) -> int:
        """Read what is new in the record and send it; returns the lines sent. Reads nothing while
        the sink has no room (InfluxDB away): the record keeps it until then."""
        self._checkpoint()
        if self.sink.room() < 3 * self.page + 16 * len(self.where):
            return 0
        now = self.now_ms()
        out: list[str] = []
        retract_from: dict[str, int] = {}
        for seq, machine_id, from_ms in self.store.revisions(self.revision):
            self.revision = seq
            c = self.cursors.get(machine_id)
            if c is None:
                continue
            retract_from[machine_id] = min(retract_from.get(machine_id, from_ms), from_ms)
            c.interval_ms = min(c.interval_ms, from_ms - 1)
            c.part_ms = min(c.part_ms, from_ms - 1)
            c.signal_ms = min(c.signal_ms, from_ms)
            c.oee_ms = min(c.oee_ms, from_ms)
            self._oee_due = True
        current = {c.machine_id: c for c in self.store.current_states() if c.machine_id in self.where}
        budget = max(self.sink.room() // 2, self.page)
        for machine_id, where in self.where.items():
            if len(out) >= budget:
                break
            out += self._machine(
                machine_id, where, now, retract_from.get(machine_id), current.get(machine_id)
            )
        if self._oee_due or self._last_oee is None or now - self._last_oee >= self.oee_every:
            out += self._oee(now)
        if self._last_health is None or now - self._last_health >= self.health_every:
            self._last_health = now
            health = line("historian", {"host": self._host}, dict(self.sink.health()), now)
            out += [health] if health else []
        if out:
            self._put_total += len(out)
            self.sink.put(out)
        if self._pending is None:
            self._pending = _Snapshot(
                {m: replace(c) for m, c in self.cursors.items()},
                self.revision,
                self._written,
                self._put_total,
            )
            self._written = []
        return len(out)

    def _checkpoint(self) -> None:
        """Save where it is once what was sent up to the last snapshot is written (or refused)."""
        pending = self._pending
        if pending is None or self.sink.settled() < pending.put_total:
            return
        self.memory.save(pending.cursors, pending.revision, pending.written, self.now_ms() - self.keep_ms)
        self._pending = None

    def close(self) -> None:
        self._checkpoint()

    # -- a machine -----------------------------------------------------------------------------
    def _machine(
        self,
        machine_id: str,
        where: dict[str, str],
        now: int,
        retract: int | None,
        current: CurrentState | None,
    ) -> list[str]:
        c = self.cursors[machine_id]
        points: list[tuple[str, str, int]] = []  # (series, line, time) of tracked measurements
        intervals = self.store.intervals_from(machine_id, c.interval_ms + 1, self.page)
        for i in intervals:
            points += self.encoder.interval(where, i)
        interval_end = intervals[-1].start_ms if len(intervals) == self.page else None
        if intervals:
            c.interval_ms = intervals[-1].start_ms
        first, last = c.part_ms + 1, min(c.part_ms + 1 + _PART_WINDOW_MS, now + 1)
        parts = self.store.parts(machine_id, first, last) if last > first else []
        points += [self.encoder.part(where, p) for p in parts]
        if last <= now:  # a stretch of the past, read whole
            c.part_ms = last - 1
        elif parts:  # up to now: from the last count on (one written a moment late is not skipped)
            c.part_ms = parts[-1].timestamp
        state = self._current_state(machine_id, where, current)
        if state is not None:
            points.append(state)
        out = [x for _, x, _ in points]
        if retract is not None:
            out += self._retractions(machine_id, points, retract, interval_end)
        self._written += [(machine_id, key.split(",", 1)[0], ts, key) for key, _, ts in points]
        out += self._signals(machine_id, where)
        return out

    def _current_state(
        self, machine_id: str, where: dict[str, str], current: CurrentState | None
    ) -> tuple[str, str, int] | None:
        if current is None or current.since_ms is None:
            return None
        piece = current.piece or {}
        stopped = current.state not in (MachineState.RUNNING, MachineState.COMMS_LOSS)
        reason = piece.get("reason") if stopped else None
        point = self.encoder.state(
            where, current.state, current.since_ms, reason, piece.get("job"), piece.get("operation")
        )
        if self._current.get(machine_id) == point[1]:
            return None
        self._current[machine_id] = point[1]
        return point

    def _retractions(
        self, machine_id: str, points: list[tuple[str, str, int]], from_ms: int, to_ms: int | None
    ) -> list[str]:
        """Points written before in [from, to] (to None: from on) that the rewrite no longer has."""
        now_have = {(key.split(",", 1)[0], ts): key for key, _, ts in points}
        current = self._current.get(machine_id)
        before = self.memory.written(machine_id, from_ms, to_ms if to_ms is not None else 2**62)
        before.update(((m, ts), key) for _, m, ts, key in self._written_for(machine_id) if ts >= from_ms)
        out = []
        for (measurement, ts), key in sorted(before.items()):
            if measurement not in _TRACKED or now_have.get((measurement, ts)) == key:
                continue
            if current is not None and current.startswith(key + " ") and current.endswith(f" {ts}"):
                continue  # the open state's point, sent again below when it changes
            out.append(retraction(key, ts))
        return out

    def _written_for(self, machine_id: str) -> list[tuple[str, str, int, str]]:
        pending = self._pending.written if self._pending is not None else []
        return [w for w in (*pending, *self._written) if w[0] == machine_id]

    def _signals(self, machine_id: str, where: dict[str, str]) -> list[str]:
        c = self.cursors[machine_id]
        sent = self._sent[machine_id]
        rows = self.store.signal_events(machine_id, c.signal_ms - self.lookback, self.page + len(sent))
        new = [(ts, name, value) for ts, name, value in rows if (ts, name) not in sent]
        if not rows:
            return []
        c.signal_ms = max(c.signal_ms, rows[-1][0])
        floor = c.signal_ms - self.lookback
        sent.update((ts, name) for ts, name, _ in new)
        self._sent[machine_id] = {k for k in sent if k[0] >= floor}
        return self.encoder.signals(where, new)

    # -- OEE and losses ------------------------------------------------------------------------
    def _oee(self, now: int) -> list[str]:
        self._last_oee, self._oee_due = now, False
        calendar = self.calendar
        if calendar is None:
            return []
        since = min(c.oee_ms for c in self.cursors.values())
        shifts = calendar.shifts(since, now) if since < now else []
        if not shifts:
            for c in self.cursors.values():
                c.oee_ms = max(c.oee_ms, now)
            return []
        starts = {s.key: (s.start_ms, s.end_ms) for s in shifts}
        tallies = oee(
            self.store,
            calendar,
            self.definition,
            shifts[0].start_ms,
            min(now, shifts[-1].end_ms),
            by=("machine", "shift"),
            machines=list(self.where),
            timezone=self.site.config.timezone,
            now_ms=now,
            by_reason=True,
            cycles=self.cycles,
        )
        out: list[str] = []
        for key, tally in sorted(tallies.items(), key=lambda kv: str(kv[0])):
            values = dict(key)
            machine_id, shift = values["machine"], values["shift"]
            if machine_id is None or shift is None or shift not in starts:
                continue
            start, end = starts[shift]
            if end <= self.cursors[machine_id].oee_ms:
                continue  # written after it ended, and no correction since
            where = self.where[machine_id]
            found = self.encoder.oee(where, shift, start, tally)
            out += [found] if found else []
            out += self.encoder.losses(where, shift, start, tally)
        open_from = min((s.start_ms for s in shifts if s.end_ms > now), default=now)
        for c in self.cursors.values():
            c.oee_ms = open_from
        return out
