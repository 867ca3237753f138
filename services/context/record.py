"""The record: closed state intervals, part count increments and each machine's current state.

SQLite by default (one file, WAL). Writes are idempotent: the same interval or count written twice
is stored once, so replaying the same input gives the same record. See docs/record-schema.md.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from services.context.state import LOST, Interval, MachineState, PartsMade, SignalValue, Value

SCHEMA = """
CREATE TABLE IF NOT EXISTS machine (
    machine_id  TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    name        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS current_state (
    machine_id  TEXT PRIMARY KEY REFERENCES machine(machine_id),
    state       TEXT NOT NULL,
    since_ms    INTEGER,
    updated_ms  INTEGER,
    counter     INTEGER
);
CREATE TABLE IF NOT EXISTS state_interval (
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER NOT NULL CHECK (end_ms > start_ms),
    state       TEXT NOT NULL,
    reason      TEXT,
    PRIMARY KEY (machine_id, start_ms)
);
CREATE INDEX IF NOT EXISTS state_interval_end ON state_interval (machine_id, end_ms);
CREATE TABLE IF NOT EXISTS signal_event (
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    ts_ms       INTEGER NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT,
    source      TEXT NOT NULL,
    PRIMARY KEY (machine_id, ts_ms, name)
);
CREATE TABLE IF NOT EXISTS health (
    scope       TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       REAL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (scope, name)
);
CREATE TABLE IF NOT EXISTS part_count (
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    ts_ms       INTEGER NOT NULL,
    delta       INTEGER NOT NULL CHECK (delta > 0),
    counter     INTEGER NOT NULL,
    PRIMARY KEY (machine_id, ts_ms, counter)
);
"""


Event = tuple[str, SignalValue, str]  # machine id, value (or LOST marker), source: live, birth, lost


@dataclass(frozen=True, slots=True)
class RebuildStart:
    """What a machine looked like just before `start_ms`, and every event from then on."""

    start_ms: int
    previous_start: int | None  # the interval that ends at start_ms begins here (None: there is none)
    previous_state: MachineState
    signals: dict[str, Value]
    counter: int | None
    events: list[SignalValue]


@dataclass(frozen=True, slots=True)
class CurrentState:
    machine_id: str
    path: str
    name: str
    state: MachineState
    since_ms: int | None
    updated_ms: int | None
    counter: int | None


class RecordStore:
    """A SQLite record. Safe to share between the asyncio loop and the API's worker threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(state_interval)")}
        if "reason" not in columns:  # a record from before reasons
            self._db.execute("ALTER TABLE state_interval ADD COLUMN reason TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def register_machines(self, machines: Iterable[tuple[str, str, str]]) -> None:
        """(machine id, ISA-95 path, name) of every machine in the site model."""
        with self._lock:
            self._db.executemany(
                "INSERT INTO machine VALUES (?, ?, ?) ON CONFLICT(machine_id) DO UPDATE "
                "SET path = excluded.path, name = excluded.name",
                list(machines),
            )

    def write(
        self,
        intervals: Iterable[Interval] = (),
        parts: Iterable[PartsMade] = (),
        current: Iterable[tuple[str, MachineState, int | None, int | None, int | None]] = (),
        events: Iterable[Event] = (),
    ) -> None:
        """Store closed intervals, part counts, current states and logged events in one transaction."""
        with self._lock, self._transaction() as db:
            self._put(db, intervals, parts, current, events)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _put(
        db: sqlite3.Connection,
        intervals: Iterable[Interval],
        parts: Iterable[PartsMade],
        current: Iterable[tuple[str, MachineState, int | None, int | None, int | None]],
        events: Iterable[Event] = (),
    ) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO signal_event VALUES (?, ?, ?, ?, ?)",
            [(m, v.timestamp, v.name, json.dumps(v.value), src) for m, v, src in events],
        )
        db.executemany(
            "INSERT OR REPLACE INTO state_interval (machine_id, start_ms, end_ms, state, reason)"
            " VALUES (?, ?, ?, ?, ?)",
            [(i.machine_id, i.start_ms, i.end_ms, i.state.value, i.reason) for i in intervals],
        )
        db.executemany(
            "INSERT OR IGNORE INTO part_count VALUES (?, ?, ?, ?)",
            [(p.machine_id, p.timestamp, p.delta, p.counter) for p in parts],
        )
        db.executemany(
            "INSERT OR REPLACE INTO current_state VALUES (?, ?, ?, ?, ?)",
            [(m, st.value, since, updated, counter) for m, st, since, updated, counter in current],
        )

    # -- backfill -------------------------------------------------------------------------------
    def backfill(self, machine_id: str, events: Iterable[SignalValue], cover_from: int, cover_to: int) -> int:
        """Historical values from an edge node's buffer, which saw the machine from `cover_from` to
        `cover_to`: they go into the event log (once, however often they come), and the comms-loss
        markers the host wrote in that window are void. Returns how much changed (0: nothing to redo)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            added = db.executemany(
                "INSERT OR IGNORE INTO signal_event VALUES (?, ?, ?, ?, 'historical')",
                [(machine_id, v.timestamp, v.name, json.dumps(v.value)) for v in events],
            ).rowcount
            voided = db.execute(
                "DELETE FROM signal_event WHERE machine_id = ? AND name = ? AND ts_ms >= ? AND ts_ms < ?",
                (machine_id, LOST, cover_from, cover_to),
            ).rowcount
            db.execute("COMMIT")
        return added + voided

    def rebuild_start(self, machine_id: str, from_ms: int) -> RebuildStart:
        """Where to recompute a machine's record from, to take in events at or after `from_ms`."""
        with self._lock:
            db = self._db
            row = db.execute(
                "SELECT max(s) FROM (SELECT start_ms AS s FROM state_interval"
                " WHERE machine_id = ? AND start_ms <= ?"
                " UNION ALL SELECT since_ms FROM current_state WHERE machine_id = ? AND since_ms <= ?)",
                (machine_id, from_ms, machine_id, from_ms),
            ).fetchone()
            start = row[0] if row and row[0] is not None else from_ms
            prev = db.execute(
                "SELECT start_ms, state FROM state_interval WHERE machine_id = ? AND end_ms = ?",
                (machine_id, start),
            ).fetchone()
            lost = db.execute(
                "SELECT max(ts_ms) FROM signal_event WHERE machine_id = ? AND name = ? AND ts_ms < ?",
                (machine_id, LOST, start),
            ).fetchone()[0]
            signals = {
                name: json.loads(value)
                for name, value, _ in db.execute(
                    "SELECT name, value, max(ts_ms) FROM signal_event WHERE machine_id = ? AND name != ? "
                    "AND ts_ms < ? AND ts_ms > ? GROUP BY name",
                    (machine_id, LOST, start, -1 if lost is None else lost),
                )
            }
            counter = db.execute(
                "SELECT value FROM signal_event WHERE machine_id = ? AND name = 'part_count' AND ts_ms < ? "
                "AND value != 'null' ORDER BY ts_ms DESC LIMIT 1",
                (machine_id, start),
            ).fetchone()
            events = [
                SignalValue(name, json.loads(value), ts)
                for ts, name, value in db.execute(
                    "SELECT ts_ms, name, value FROM signal_event"
                    " WHERE machine_id = ? AND ts_ms >= ? ORDER BY ts_ms",
                    (machine_id, start),
                )
            ]
        return RebuildStart(
            start,
            prev[0] if prev else None,
            MachineState(prev[1]) if prev else MachineState.COMMS_LOSS,
            signals,
            json.loads(counter[0]) if counter else None,
            events,
        )

    def replace_from(
        self,
        machine_id: str,
        start: RebuildStart,
        intervals: list[Interval],
        parts: list[PartsMade],
        current: tuple[MachineState, int | None, int | None, int | None],
    ) -> None:
        """Put a recomputed stretch of a machine's record in place of what was there."""
        first = start.previous_start if start.previous_start is not None else start.start_ms
        with self._lock, self._transaction() as db:
            db.execute(
                "DELETE FROM state_interval WHERE machine_id = ? AND start_ms >= ?", (machine_id, first)
            )
            db.execute(
                "DELETE FROM part_count WHERE machine_id = ? AND ts_ms >= ?", (machine_id, start.start_ms)
            )
            self._put(db, intervals, parts, [(machine_id, *current)])

    # -- health ---------------------------------------------------------------------------------
    def write_health(self, rows: Iterable[tuple[str, str, float | None, int]]) -> None:
        """(scope, name, value, updated) for `host/<id>`, `edge/<id>` and `machine/<id>` scopes."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO health VALUES (?, ?, ?, ?)", list(rows))

    def health(self) -> list[tuple[str, str, float | None, int]]:
        with self._lock:
            return list(
                self._db.execute("SELECT scope, name, value, updated_ms FROM health ORDER BY scope, name")
            )

    # -- queries -------------------------------------------------------------------------------
    def current_states(self) -> list[CurrentState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT m.machine_id, m.path, m.name, c.state, c.since_ms, c.updated_ms, c.counter "
                "FROM machine m LEFT JOIN current_state c USING (machine_id) ORDER BY m.path"
            ).fetchall()
        return [
            CurrentState(
                mid, path, name, MachineState(state or MachineState.COMMS_LOSS), since, updated, counter
            )
            for mid, path, name, state, since, updated, counter in rows
        ]

    def current_state(self, machine_id: str) -> CurrentState | None:
        return next((c for c in self.current_states() if c.machine_id == machine_id), None)

    def intervals(self, machine_id: str, start_ms: int, end_ms: int) -> list[Interval]:
        """Closed intervals that overlap [start, end), in time order, not clipped."""
        with self._lock:
            rows = self._db.execute(
                "SELECT start_ms, end_ms, state, reason FROM state_interval "
                "WHERE machine_id = ? AND end_ms > ? AND start_ms < ? ORDER BY start_ms",
                (machine_id, start_ms, end_ms),
            ).fetchall()
        return [Interval(machine_id, s, e, MachineState(st), reason) for s, e, st, reason in rows]

    def parts(self, machine_id: str, start_ms: int, end_ms: int) -> list[PartsMade]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts_ms, delta, counter FROM part_count "
                "WHERE machine_id = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
                (machine_id, start_ms, end_ms),
            ).fetchall()
        return [PartsMade(machine_id, ts, d, c) for ts, d, c in rows]
