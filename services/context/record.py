"""The record: closed state intervals, part count increments and each machine's current state.

SQLite by default (one file, WAL). Writes are idempotent: the same interval or count written twice
is stored once, so replaying the same input gives the same record. See docs/record-schema.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from services.context.jobs import Operation, Pending
from services.context.state import LOST, Interval, MachineState, PartsMade, SignalValue, Story, Value
from services.context.timeline import Hold, OpEvent
from uns.clock import iso

logger = logging.getLogger(__name__)

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
    counter     INTEGER,
    story       TEXT,
    memory      TEXT,
    piece       TEXT
);
CREATE TABLE IF NOT EXISTS state_interval (
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    start_ms    INTEGER NOT NULL,
    end_ms      INTEGER NOT NULL CHECK (end_ms > start_ms),
    state       TEXT NOT NULL,
    reason      TEXT,
    source      TEXT,
    job         TEXT,
    operation   TEXT,
    shift       TEXT,
    operator    TEXT,
    hold        TEXT,
    run_start_ms INTEGER,
    evidence    TEXT,
    stop_start_ms INTEGER,
    story       TEXT,
    memory      TEXT,
    PRIMARY KEY (machine_id, start_ms)
);
CREATE INDEX IF NOT EXISTS state_interval_end ON state_interval (machine_id, end_ms);
-- OEE (services/oee/), without reading the wide rows: a machine's time by shift, state and reason in
-- the order it is summed, and an operation's running time between its part counts (its cycles)
CREATE INDEX IF NOT EXISTS state_interval_shift
    ON state_interval (machine_id, shift, state, reason, end_ms, start_ms, job, operation);
CREATE INDEX IF NOT EXISTS state_interval_operation
    ON state_interval (machine_id, job, operation, state, start_ms, end_ms);
-- pieces outside every shift longer than a day (few): see shift_time
CREATE INDEX IF NOT EXISTS state_interval_long_outside
    ON state_interval (machine_id, end_ms) WHERE shift IS NULL AND end_ms - start_ms > 86400000;
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
    job         TEXT,
    operation   TEXT,
    shift       TEXT,
    PRIMARY KEY (machine_id, ts_ms, counter)
);
CREATE INDEX IF NOT EXISTS part_count_shift ON part_count (machine_id, shift, job, operation, ts_ms, delta);
CREATE INDEX IF NOT EXISTS part_count_operation ON part_count (machine_id, job, operation, ts_ms, delta);
-- an operation's parts, on whichever machine they were counted (schema version 2)
CREATE INDEX IF NOT EXISTS part_count_job ON part_count (job, operation, delta) WHERE job IS NOT NULL;
CREATE TABLE IF NOT EXISTS dispatch_version (
    version     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms       INTEGER NOT NULL,
    scope       TEXT NOT NULL,
    by          TEXT,
    via         TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operation (
    job         TEXT NOT NULL,
    operation   TEXT NOT NULL,
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    program     TEXT NOT NULL,
    quantity    INTEGER NOT NULL,
    sequence    INTEGER NOT NULL,
    part_number TEXT NOT NULL,
    ideal_cycle_ms   INTEGER,
    planned_start_ms INTEGER,
    planned_end_ms   INTEGER,
    status      TEXT NOT NULL,
    actual_start_ms  INTEGER,
    actual_end_ms    INTEGER,
    version     INTEGER NOT NULL REFERENCES dispatch_version(version),
    dispatched_ms    INTEGER,
    PRIMARY KEY (job, operation)
);
CREATE TABLE IF NOT EXISTS operation_event (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    ts_ms       INTEGER NOT NULL,
    job         TEXT NOT NULL,
    operation   TEXT NOT NULL,
    action      TEXT NOT NULL,
    cause       TEXT NOT NULL,
    by          TEXT
);
CREATE TABLE IF NOT EXISTS operator_event (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    ts_ms       INTEGER NOT NULL,
    operator    TEXT,
    via         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quality_hold (
    hold_id     TEXT PRIMARY KEY,
    machine_id  TEXT REFERENCES machine(machine_id),
    job         TEXT,
    operation   TEXT,
    opened_ms   INTEGER NOT NULL,
    closed_ms   INTEGER,
    note        TEXT NOT NULL,
    opened_by   TEXT,
    closed_by   TEXT
);
CREATE TABLE IF NOT EXISTS reason_override (
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    run_start_ms INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (machine_id, run_start_ms)
);
CREATE TABLE IF NOT EXISTS reason_audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    run_start_ms INTEGER NOT NULL,
    old_reason  TEXT,
    new_reason  TEXT NOT NULL,
    by          TEXT,
    via         TEXT NOT NULL,
    changed_ms  INTEGER NOT NULL,
    note        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quality_count (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    ts_ms       INTEGER NOT NULL,
    job         TEXT,
    operation   TEXT,
    shift       TEXT,
    result      TEXT NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    by          TEXT,
    via         TEXT NOT NULL
);
-- quality reports by machine and time (reports, the review, exports) and by operation (its good parts)
CREATE INDEX IF NOT EXISTS quality_count_time ON quality_count (machine_id, ts_ms);
CREATE INDEX IF NOT EXISTS quality_count_operation ON quality_count (job, operation, result, quantity);
CREATE TABLE IF NOT EXISTS dropped_operation (
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    job         TEXT NOT NULL,
    operation   TEXT NOT NULL,
    dispatched_ms INTEGER,
    dropped_ms  INTEGER NOT NULL
);
-- The API's named tokens (services/api/tokens.py): only a hash of each is kept.
CREATE TABLE IF NOT EXISTS api_token (
    token_id    TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    scope       TEXT NOT NULL,  -- JSON list of cells (area/line/cell) and machines an operator may act on
    issued_ms   INTEGER NOT NULL,
    expires_ms  INTEGER,
    revoked_ms  INTEGER
);
-- Commands applied, by the id their sender gave them: a repeat gets the first answer, not a second go.
CREATE TABLE IF NOT EXISTS applied_command (
    command_id  TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    applied_ms  INTEGER NOT NULL,
    result      TEXT NOT NULL
);
-- What was rewritten about the past (a rebuild, a backfill, a late quality report), for readers
-- that keep a copy (the historian): from when, for which machine. Appends follow by time instead.
CREATE TABLE IF NOT EXISTS record_revision (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  TEXT NOT NULL REFERENCES machine(machine_id),
    from_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_confirmation (
    machine_id  TEXT PRIMARY KEY REFERENCES machine(machine_id),
    ts_ms       INTEGER NOT NULL,
    program     TEXT NOT NULL,
    candidates  TEXT NOT NULL
);
"""

# The record's time summed by machine, shift, job, operation, state and reason, kept up to date by
# triggers on every write of `state_interval` (a rebuild's delete too): a 30-day report reads these
# sums for the shifts that lie wholly inside its window and cuts only the pieces of the shifts at its
# two ends (`_inner_shifts`). Pieces outside every shift (shift NULL) are summed by the UTC day they
# begin on, as the shift `<date>/` (no shift is named ''). Each group holds its pieces' number, the
# stops that begin in them, and the first start and last end among them.
_SHIFT_TIME = """
CREATE TABLE shift_time (
    machine_id  TEXT NOT NULL,
    shift       TEXT NOT NULL,  -- the shift key, or `<UTC date>/` outside every shift
    job         TEXT NOT NULL,  -- '' for none, as operation and reason
    operation   TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    ms          INTEGER NOT NULL,
    pieces      INTEGER NOT NULL,
    stops       INTEGER NOT NULL,
    first_ms    INTEGER NOT NULL,
    last_ms     INTEGER NOT NULL,
    PRIMARY KEY (machine_id, shift, state, reason, job, operation)
) WITHOUT ROWID
"""
DAY_MS = 86_400_000
_UTC_DAY = {  # the UTC date R began on, as `<date>/`
    "sqlite": "strftime('%Y-%m-%d/', R.start_ms / 1000, 'unixepoch')",
    "postgresql": "to_char(to_timestamp(R.start_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD') || '/'",
}
_BEGINS_STOP = (
    "(CASE WHEN coalesce(R.stop_start_ms, R.run_start_ms, R.start_ms) BETWEEN R.start_ms AND R.end_ms - 1"
    " THEN 1 ELSE 0 END)"
)
_DAY_OF_R = (  # i began on the UTC day R began on
    f"i.start_ms >= R.start_ms / {DAY_MS} * {DAY_MS} AND i.start_ms < (R.start_ms / {DAY_MS} + 1) * {DAY_MS}"
)
_SHIFT_TIME_KEY = "machine_id, shift, state, reason, job, operation"


def _shift_time_sql(dialect: str) -> tuple[str, str]:
    """What adds a state_interval row R to shift_time, and what takes it out (R: NEW or OLD), in the
    SQL of the dialect (`sqlite`, `postgresql`; PostgreSQL's scalar min and max are LEAST and GREATEST,
    its `IS` between values IS NOT DISTINCT FROM, and it has no INDEXED BY)."""
    pg = dialect == "postgresql"
    bucket = f"coalesce(R.shift, {_UTC_DAY[dialect]})"
    group = (
        f"machine_id = R.machine_id AND shift = {bucket} AND job = coalesce(R.job, '')"
        " AND operation = coalesce(R.operation, '') AND state = R.state AND reason = coalesce(R.reason, '')"
    )
    least, greatest, same_as = ("LEAST", "GREATEST", "IS NOT DISTINCT FROM") if pg else ("min", "max", "IS")
    add = (
        "INSERT INTO shift_time VALUES"  # noqa: S608 (constants all)
        f" (R.machine_id, {bucket}, coalesce(R.job, ''), coalesce(R.operation, ''), R.state,"
        f" coalesce(R.reason, ''), R.end_ms - R.start_ms, 1, {_BEGINS_STOP}, R.start_ms, R.end_ms)"
        f" ON CONFLICT ({_SHIFT_TIME_KEY}) DO UPDATE SET ms = shift_time.ms + excluded.ms,"
        " pieces = shift_time.pieces + 1, stops = shift_time.stops + excluded.stops,"
        f" first_ms = {least}(shift_time.first_ms, excluded.first_ms),"
        f" last_ms = {greatest}(shift_time.last_ms, excluded.last_ms);"
    )
    members = (  # the state_interval rows of R's group (but R): in a shift, outside every shift
        ("R.shift IS NOT NULL", f"{'' if pg else 'INDEXED BY state_interval_shift '}WHERE i.shift = R.shift"),
        ("R.shift IS NULL", f"WHERE i.shift IS NULL AND {_DAY_OF_R}"),
    )
    same = (
        f" AND i.machine_id = R.machine_id AND i.state = R.state AND i.reason {same_as} R.reason"
        f" AND i.job {same_as} R.job AND i.operation {same_as} R.operation"
    )
    take = (
        "UPDATE shift_time SET ms = ms - (R.end_ms - R.start_ms), pieces = pieces - 1,"  # noqa: S608
        f" stops = stops - {_BEGINS_STOP} WHERE {group};"
        f" DELETE FROM shift_time WHERE {group} AND pieces = 0;"
        + "".join(
            " UPDATE shift_time SET"  # noqa: S608
            # (PostgreSQL fires these after the whole statement: an UPDATE that moves several pieces
            # out of a group finds none left in it before the last is taken out, which deletes it)
            f" first_ms = coalesce((SELECT min(i.start_ms) FROM state_interval i {among}{same}), first_ms),"
            f" last_ms = coalesce((SELECT max(i.end_ms) FROM state_interval i {among}{same}), last_ms)"
            f" WHERE {when} AND {group} AND (first_ms = R.start_ms OR last_ms = R.end_ms);"
            for when, among in members
        )
    )
    return add, take


def _as(row: str, sql: str) -> str:
    return sql.replace("R.", f"{row}.")


_ADD, _TAKE = _shift_time_sql("sqlite")
_SHIFT_TIME_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS shift_time_{name} AFTER {name.upper()} ON state_interval BEGIN {body} END"
    for name, body in (
        ("insert", _as("NEW", _ADD)),
        ("delete", _as("OLD", _TAKE)),
        ("update", f"{_as('OLD', _TAKE)} {_as('NEW', _ADD)}"),
    )
)
# Pieces outside every shift longer than a day: those that begin days before a window and end in it
_LONG_OUTSIDE = f"shift IS NULL AND end_ms - start_ms > {DAY_MS}"
_SHIFT_TIME_FILL = (  # a record from before shift_time: its sums, once
    "INSERT INTO shift_time SELECT"  # noqa: S608
    f" machine_id, coalesce(shift, {_as('state_interval', _UTC_DAY['sqlite'])}), coalesce(job, ''),"
    " coalesce(operation, ''), state, coalesce(reason, ''), sum(end_ms - start_ms), count(*),"
    f" sum({_as('state_interval', _BEGINS_STOP)}), min(start_ms), max(end_ms)"
    " FROM state_interval GROUP BY 1, 2, 3, 4, 5, 6"
)

_ADDED_COLUMNS = {  # columns added since the first record schema: records from before get them
    "state_interval": (
        *("reason", "source", "job", "operation", "shift", "operator", "hold", "run_start_ms"),
        *("evidence", "stop_start_ms", "story", "memory"),
    ),
    "part_count": ("job", "operation", "shift"),
    "current_state": ("story", "memory", "piece"),
    "operation": ("dispatched_ms",),
}
_INTERVAL_COLUMNS = (
    "machine_id, start_ms, end_ms, state, reason, source, job, operation, shift, operator, hold,"
    " run_start_ms, evidence, stop_start_ms"
)
# A current state: machine, state, since, updated, counter, and optionally the story at the start of
# the open interval, the tracker's story now, and the open interval's current piece (as JSON).
Current = tuple[Any, ...]


_compact = json.JSONEncoder(separators=(",", ":")).encode
# The story is stored on the last row of running and comms_loss intervals (where a stop can begin); a
# rebuild that would start inside a stop starts where the stop began.
_CHECKPOINTS = frozenset({MachineState.RUNNING, MachineState.COMMS_LOSS})


_JSON_FAST: dict[type, Callable[[Any], str]] = {
    bool: lambda v: "true" if v else "false",
    int: int.__repr__,
    float: lambda v: float.__repr__(v) if math.isfinite(v) else json.dumps(v),  # NaN, Infinity as json's
    str: json.dumps,
    type(None): lambda v: "null",
}


def value_json(value: Value) -> str:
    """A signal value as JSON (the event log's column), without the encoder's set-up for the common
    types: one per metric the host takes."""
    fast = _JSON_FAST.get(type(value))
    if fast is not None:
        return fast(value)
    return json.dumps(value)


def _story(story: Story | None) -> str | None:
    return None if story is None else _compact(story.to_json())


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
    story: Story | None = None  # the previous interval's story at its start (None: not recorded)
    memory: Story | None = None  # and the tracker's story when it ended


@dataclass(frozen=True, slots=True)
class CurrentState:
    machine_id: str
    path: str
    name: str
    state: MachineState
    since_ms: int | None
    updated_ms: int | None
    counter: int | None
    story: Story | None = None  # at the start of the open interval
    memory: Story | None = None  # the tracker's now
    piece: dict[str, Any] | None = None  # the open interval's current piece: reason, evidence, job...


class Rows(Protocol):
    """What a statement gives back (sqlite3's cursor, psycopg's)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int, /) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """A connection to the record: the store's SQL is written in SQLite's dialect with `?` and `?N`
    parameters; record_pg.py's connection takes the same statements to PostgreSQL."""

    def execute(self, sql: str, parameters: Any = (), /) -> Rows: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Rows: ...


class RecordError(RuntimeError):
    """The record cannot be opened or used (a newer schema, an unreachable database), said plainly."""


class RecordUnavailableError(RecordError):
    """The record cannot be reached or written just now (a database down, a disk gone): what was to
    be written is kept and tried again by the caller."""


# What SQLite says when the file cannot take a write just now (or at all): a reason to keep the
# writes and try again, not a fault in them
_UNAVAILABLE = ("disk", "locked", "unable to open", "readonly", "no such file")

# The record's schema version: migrations take older records (SQLite's user_version, PostgreSQL's
# record_schema table) up to it, and a program refuses a record of a newer version than its own.
SCHEMA_VERSION = 2


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";\n") if part.strip()]


# schema version 2's one change, for the records of version 1 (SCHEMA has it for new ones)
[_PART_COUNT_JOB] = [st for st in _statements(SCHEMA) if "INDEX IF NOT EXISTS part_count_job" in st]


class _Record:
    """A SQLite record (one file, WAL). Safe to share between the asyncio loop and the API's worker
    threads: one connection, taken under a lock. PostgreSQL (record_pg.py) keeps the same statements
    and has a connection pool instead."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # another process may hold the write lock for a while (the first open of a large record from
        # before shift_time sums it once): wait for it rather than fail after sqlite3's 5 s
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA recursive_triggers=ON")  # the rows REPLACE deletes leave shift_time too
        with self._transaction("BEGIN IMMEDIATE") as db:  # of two processes opening it, one migrates it
            self._migrate(db)

    def _migrate(self, db: Db) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RecordError(
                f"record {self.path} has schema version {version}, newer than this program's"
                f" ({SCHEMA_VERSION}): run a newer version of uns on it"
            )
        if version == SCHEMA_VERSION:
            return
        if version == 1:  # 1 -> 2: an index for an operation's parts (SCHEMA has it for new records)
            logger.info("record %s: schema version 2 (an index of part counts by operation)", self.path)
            db.execute(_PART_COUNT_JOB)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        # version 0 -> 1: a new record, or one from before schema versions (which may lack the
        # columns added since the first schema, and shift_time, summed here once)
        for statement in _statements(SCHEMA):
            db.execute(statement)
        for table, added in _ADDED_COLUMNS.items():
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column in added:
                if column not in columns:
                    kind = "INTEGER" if column.endswith("_ms") else "TEXT"
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'shift_time'").fetchone():
            if db.execute("SELECT 1 FROM state_interval LIMIT 1").fetchone():
                logger.info("record %s: summing its time by shift, once (shift_time)", self.path)
            db.execute(_SHIFT_TIME)
            db.execute(_SHIFT_TIME_FILL)
        for trigger in _SHIFT_TIME_TRIGGERS:
            db.execute(trigger)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        with self._use() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _use(self) -> Iterator[Db]:
        """A connection for one or more statements, each its own transaction."""
        with self._lock, self._unavailable():
            yield self._db

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[Db]:
        """A connection in a transaction: committed at the end, rolled back on an exception. SQLite
        takes the write lock at the start (IMMEDIATE): a transaction of one of several writers that
        read before it wrote would fail at once, not wait its turn."""
        with self._lock, self._unavailable():
            db = self._db
            db.execute(begin)
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """A full disk, a file gone or made read-only, a lock held past the timeout:
        RecordUnavailableError (the caller keeps what it was writing)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if any(m in str(exc) for m in _UNAVAILABLE):
                raise RecordUnavailableError(f"record {self.path}: {exc}") from exc
            raise

    def answers(self) -> bool:
        """Whether the record answers now (a cheap read; any thread)."""
        try:
            with self._use() as db:
                db.execute("SELECT 1").fetchall()
        except RecordUnavailableError:
            return False
        return True

    def data_version(self) -> int:
        """Changes when another connection (another process: the context service) commits."""
        with self._use() as db:
            return int(db.execute("PRAGMA data_version").fetchone()[0])

    def register_machines(self, machines: Iterable[tuple[str, str, str]]) -> None:
        """(machine id, ISA-95 path, name) of every machine in the site model. A machine id the record
        holds for another site (one record for several sites: the ids must differ) is refused."""
        machines = list(machines)
        with self._transaction() as db:
            known = dict(db.execute("SELECT machine_id, path FROM machine").fetchall())
            clash = [
                (m, known[m], path)
                for m, path, _ in machines
                if m in known and known[m].split("/")[:2] != path.split("/")[:2]
            ]
            if clash:
                m, theirs, ours = clash[0]
                raise RecordError(
                    f"machine id {m!r} is already in this record for another site ({theirs}), not"
                    f" {ours}: machine ids must differ across the sites that share a record"
                    + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else "")
                )
            db.executemany(
                "INSERT INTO machine VALUES (?, ?, ?) ON CONFLICT(machine_id) DO UPDATE "
                "SET path = excluded.path, name = excluded.name",
                list(machines),
            )

    def write(
        self,
        intervals: Iterable[Interval] = (),
        parts: Iterable[PartsMade] = (),
        current: Iterable[Current] = (),
        events: Iterable[Event] = (),
    ) -> None:
        """Store closed intervals, part counts, current states and logged events in one transaction."""
        with self._transaction() as db:
            self._put(db, intervals, parts, current, events)

    @staticmethod
    def _put(
        db: Db,
        intervals: Iterable[Interval],
        parts: Iterable[PartsMade],
        current: Iterable[Current],
        events: Iterable[Event] = (),
    ) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO signal_event VALUES (?, ?, ?, ?, ?)",
            [(m, v.timestamp, v.name, value_json(v.value), src) for m, v, src in events],
        )
        db.executemany(
            f"INSERT OR REPLACE INTO state_interval ({_INTERVAL_COLUMNS}, story, memory)"  # noqa: S608 (constants)
            f" VALUES ({', '.join('?' * 16)})",
            [
                (
                    i.machine_id,
                    i.start_ms,
                    i.end_ms,
                    i.state.value,
                    i.reason,
                    i.source,
                    i.job,
                    i.operation,
                    i.shift,
                    i.operator,
                    i.hold,
                    i.run_start_ms,
                    i.evidence,
                    i.stop_start_ms,
                    *((_story(i.story), _story(i.memory)) if i.state in _CHECKPOINTS else (None, None)),
                )
                for i in intervals
            ],
        )
        db.executemany(
            "INSERT OR REPLACE INTO part_count (machine_id, ts_ms, delta, counter, job, operation, shift)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(p.machine_id, p.timestamp, p.delta, p.counter, p.job, p.operation, p.shift) for p in parts],
        )
        rows = []
        for c in current:
            m, st, since, updated, counter, *more = c
            story, memory, piece = (*more, None, None, None)[:3]
            rows.append((m, st.value, since, updated, counter, _story(story), _story(memory), _json(piece)))
        db.executemany(
            "INSERT OR REPLACE INTO current_state"
            " (machine_id, state, since_ms, updated_ms, counter, story, memory, piece)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    # -- backfill -------------------------------------------------------------------------------
    def backfill(self, machine_id: str, events: Iterable[SignalValue], cover_from: int, cover_to: int) -> int:
        """Historical values from an edge node's buffer, which saw the machine from `cover_from` to
        `cover_to`: they go into the event log (once, however often they come), and the comms-loss
        markers the host wrote in that window are void. Returns how much changed (0: nothing to redo)."""
        events = list(events)
        with self._transaction() as db:
            added = db.executemany(
                "INSERT OR IGNORE INTO signal_event VALUES (?, ?, ?, ?, 'historical')",
                [(machine_id, v.timestamp, v.name, value_json(v.value)) for v in events],
            ).rowcount
            voided = db.execute(
                "DELETE FROM signal_event WHERE machine_id = ? AND name = ? AND ts_ms >= ? AND ts_ms < ?",
                (machine_id, LOST, cover_from, cover_to),
            ).rowcount
            if added + voided:
                first = min((v.timestamp for v in events), default=cover_from)
                _revised(db, machine_id, min(first, cover_from))
        return added + voided

    def rebuild_start(self, machine_id: str, from_ms: int) -> RebuildStart:
        """Where to recompute a machine's record from, to take in events at or after `from_ms`."""
        with self._use() as db:
            row = db.execute(
                "SELECT max(s) FROM (SELECT start_ms AS s FROM state_interval"
                " WHERE machine_id = ? AND start_ms <= ?"
                " UNION ALL SELECT since_ms FROM current_state WHERE machine_id = ? AND since_ms <= ?)"
                " AS starts",
                (machine_id, from_ms, machine_id, from_ms),
            ).fetchone()
            start = row[0] if row and row[0] is not None else from_ms
            run = db.execute(  # a piece cut at a shift or context change: go back to where its state began
                "SELECT run_start_ms FROM state_interval WHERE machine_id = ? AND start_ms = ?",
                (machine_id, start),
            ).fetchone()
            if run and run[0] is not None:
                start = run[0]
            while True:  # inside a stop: go back to where it began (the story is kept at its edges)
                prev = db.execute(
                    "SELECT coalesce(run_start_ms, start_ms), state, story, memory FROM state_interval"
                    " WHERE machine_id = ? AND end_ms = ?",
                    (machine_id, start),
                ).fetchone()
                if prev is None or MachineState(prev[1]) in _CHECKPOINTS:
                    break
                start = prev[0]
            lost = db.execute(
                "SELECT max(ts_ms) FROM signal_event WHERE machine_id = ? AND name = ? AND ts_ms < ?",
                (machine_id, LOST, start),
            ).fetchone()[0]
            signals = {  # each signal's last value before the start (since the last comms loss)
                name: json.loads(value)
                for name, value in db.execute(
                    "SELECT e.name, e.value FROM signal_event e JOIN (SELECT name, max(ts_ms) AS ts"
                    " FROM signal_event WHERE machine_id = ?1 AND name != ?2 AND ts_ms < ?3 AND ts_ms > ?4"
                    " GROUP BY name) m ON e.machine_id = ?1 AND e.name = m.name AND e.ts_ms = m.ts",
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
            Story.from_json(json.loads(prev[2])) if prev and prev[2] else None,
            Story.from_json(json.loads(prev[3])) if prev and prev[3] else None,
        )

    def replace_from(
        self,
        machine_id: str,
        start: RebuildStart,
        intervals: list[Interval],
        parts: list[PartsMade],
        current: tuple[Any, ...],
    ) -> None:
        """Put a recomputed stretch of a machine's record in place of what was there."""
        first = start.previous_start if start.previous_start is not None else start.start_ms
        with self._transaction() as db:
            db.execute(
                "DELETE FROM state_interval WHERE machine_id = ? AND start_ms >= ?", (machine_id, first)
            )
            db.execute(
                "DELETE FROM part_count WHERE machine_id = ? AND ts_ms >= ?", (machine_id, start.start_ms)
            )
            self._put(db, intervals, parts, [(machine_id, *current)])
            _revised(db, machine_id, first)

    # -- health ---------------------------------------------------------------------------------
    def write_health(self, rows: Iterable[tuple[str, str, float | None, int]]) -> None:
        """(scope, name, value, updated) for `host/<id>`, `edge/<id>` and `machine/<id>` scopes."""
        with self._use() as db:
            db.executemany("INSERT OR REPLACE INTO health VALUES (?, ?, ?, ?)", list(rows))

    def health(self) -> list[tuple[str, str, float | None, int]]:
        with self._use() as db:
            return list(db.execute("SELECT scope, name, value, updated_ms FROM health ORDER BY scope, name"))

    # -- queries -------------------------------------------------------------------------------
    def current_states(self) -> list[CurrentState]:
        with self._use() as db:
            rows = db.execute(
                "SELECT m.machine_id, m.path, m.name, c.state, c.since_ms, c.updated_ms, c.counter,"
                " c.story, c.memory, c.piece"
                " FROM machine m LEFT JOIN current_state c USING (machine_id) ORDER BY m.path"
            ).fetchall()
        return [
            CurrentState(
                mid,
                path,
                name,
                MachineState(state or MachineState.COMMS_LOSS),
                since,
                updated,
                counter,
                Story.from_json(json.loads(story)) if story else None,
                Story.from_json(json.loads(memory)) if memory else None,
                json.loads(piece) if piece else None,
            )
            for mid, path, name, state, since, updated, counter, story, memory, piece in rows
        ]

    def current_state(self, machine_id: str) -> CurrentState | None:
        return next((c for c in self.current_states() if c.machine_id == machine_id), None)

    def intervals(self, machine_id: str, start_ms: int, end_ms: int) -> list[Interval]:
        """Closed intervals that overlap [start, end), in time order, not clipped."""
        with self._use() as db:
            rows = db.execute(
                f"SELECT {_INTERVAL_COLUMNS} FROM state_interval "  # noqa: S608 (constants)
                "WHERE machine_id = ? AND end_ms > ? AND start_ms < ? ORDER BY start_ms",
                (machine_id, start_ms, end_ms),
            ).fetchall()
        return [_interval(row) for row in rows]

    def parts(self, machine_id: str, start_ms: int, end_ms: int) -> list[PartsMade]:
        with self._use() as db:
            rows = db.execute(
                "SELECT ts_ms, delta, counter, job, operation, shift FROM part_count "
                "WHERE machine_id = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
                (machine_id, start_ms, end_ms),
            ).fetchall()
        return [PartsMade(machine_id, ts, d, c, j, o, s) for ts, d, c, j, o, s in rows]

    # -- the API's named tokens -------------------------------------------------------------------
    def add_token(
        self,
        token_id: str,
        digest: str,
        name: str,
        role: str,
        scope: list[str],
        issued_ms: int,
        expires_ms: int | None,
    ) -> None:
        with self._use() as db:
            db.execute(
                "INSERT INTO api_token VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (token_id, digest, name, role, json.dumps(scope), issued_ms, expires_ms),
            )

    def token(self, token_id: str) -> tuple[str, str, str, list[str], int | None, int | None] | None:
        """(digest, name, role, scope, expires, revoked) of a token id, or None."""
        with self._use() as db:
            row = db.execute(
                "SELECT digest, name, role, scope, expires_ms, revoked_ms FROM api_token WHERE token_id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            return None
        digest, name, role, scope, expires, revoked = row
        return digest, name, role, json.loads(scope), expires, revoked

    def tokens(self) -> list[tuple[str, str, str, list[str], int, int | None, int | None]]:
        """(id, name, role, scope, issued, expires, revoked) of every token, oldest first."""
        with self._use() as db:
            rows = db.execute(
                "SELECT token_id, name, role, scope, issued_ms, expires_ms, revoked_ms FROM api_token"
                " ORDER BY issued_ms, token_id"
            ).fetchall()
        return [(i, n, r, json.loads(sc), iss, exp, rev) for i, n, r, sc, iss, exp, rev in rows]

    def revoke_tokens(self, who: str, revoked_ms: int) -> int:
        """Revoke the token with this id, or every token of this name; how many were revoked."""
        with self._use() as db:
            return db.execute(
                "UPDATE api_token SET revoked_ms = ? WHERE (token_id = ? OR name = ?) AND revoked_ms IS NULL",
                (revoked_ms, who, who),
            ).rowcount

    # -- commands, once ---------------------------------------------------------------------------
    def applied(self, command_id: str) -> str | None:
        """The answer (JSON) given when the command with this id was applied, if it was."""
        with self._use() as db:
            row = db.execute(
                "SELECT result FROM applied_command WHERE command_id = ?", (command_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def mark_applied(self, command_id: str, kind: str, applied_ms: int, result: str) -> None:
        with self._use() as db:
            db.execute(
                "INSERT OR IGNORE INTO applied_command VALUES (?, ?, ?, ?)",
                (command_id, kind, applied_ms, result),
            )

    # -- for readers that keep a copy (the historian) ------------------------------------------
    def revisions(self, after_seq: int) -> list[tuple[int, str, int]]:
        """(seq, machine, from when) of every rewrite of the past after `after_seq`, in order."""
        with self._use() as db:
            return list(
                db.execute(
                    "SELECT seq, machine_id, from_ms FROM record_revision WHERE seq > ? ORDER BY seq",
                    (after_seq,),
                )
            )

    def last_revision(self) -> int:
        with self._use() as db:
            return int(db.execute("SELECT coalesce(max(seq), 0) FROM record_revision").fetchone()[0])

    def intervals_from(self, machine_id: str, start_ms: int, limit: int) -> list[Interval]:
        """Up to `limit` closed intervals of a machine that start at or after `start_ms`, in order."""
        with self._use() as db:
            rows = db.execute(
                f"SELECT {_INTERVAL_COLUMNS} FROM state_interval "  # noqa: S608 (constants)
                "WHERE machine_id = ? AND start_ms >= ? ORDER BY start_ms LIMIT ?",
                (machine_id, start_ms, limit),
            ).fetchall()
        return [_interval(row) for row in rows]

    def signal_events(self, machine_id: str, from_ms: int, limit: int) -> list[tuple[int, str, Value | None]]:
        """Up to `limit` logged signal values of a machine from `from_ms` on: (when, signal, value),
        in time order (comms-loss markers left out)."""
        with self._use() as db:
            rows = db.execute(
                "SELECT ts_ms, name, value FROM signal_event WHERE machine_id = ? AND ts_ms >= ?"
                " AND name != ? ORDER BY ts_ms, name LIMIT ?",
                (machine_id, from_ms, LOST, limit),
            ).fetchall()
        return [(ts, name, json.loads(value) if value is not None else None) for ts, name, value in rows]


def _pairs(firsts: str | None, seconds: str | None) -> list[tuple[int, int]]:
    """Two grouped concatenations of numbers as pairs, in the order of the first (the index's)."""
    if firsts is None or seconds is None:
        return []
    a, b = list(map(int, firsts.split(","))), list(map(int, seconds.split(",")))
    out = list(zip(a, b, strict=True))
    return out if a == sorted(a) else sorted(out)


def _shift_days(start_ms: int, end_ms: int) -> tuple[str, str]:
    """Bounds of the shift keys (`<production date>/<name>`) of shifts that can overlap [start, end):
    two days either side of the UTC dates, whatever the site's time zone and however long its shifts."""
    first = datetime.fromtimestamp(start_ms / 1000, UTC).date() - timedelta(days=2)
    last = datetime.fromtimestamp(end_ms / 1000, UTC).date() + timedelta(days=2)
    return first.isoformat(), last.isoformat()


def _summed(among: str, columns: Callable[[str], str], by: str, where: str, outside: str | None) -> str:
    """A read of the record's time in [?1, ?2) of the machines `among` (shift keys in [?4, ?5)),
    grouped by machine, shift (NULL outside every shift) and `by`: from shift_time for the shifts
    (and the days outside every shift) wholly inside the window, and from the pieces for those at its
    two ends (`edge`: a piece begins at or before ?1 or ends after ?2) and for the long pieces outside
    every shift that began before the first day read. `columns(kind)` selects the rest of a row from
    shift_time (kind "sum") or from pieces ("piece"); `where` keeps rows of either, `outside` those
    outside every shift (None: none, the caller reads them)."""
    bucket = "shift NOT LIKE '%/'" if outside is None else f"(shift NOT LIKE '%/' OR {outside})"
    edge = "machine_id, shift FROM edge"
    piece = f"{columns('piece')} FROM state_interval"
    null = "" if outside is None else f" AND {outside}"
    return (
        "WITH t AS MATERIALIZED (SELECT * FROM shift_time"  # noqa: S608 (constants)
        f" WHERE machine_id IN ({among}) AND shift >= ?4 AND shift < ?5 AND {where} AND {bucket}),"
        " edge AS MATERIALIZED (SELECT machine_id, shift,"
        f" CASE WHEN shift LIKE '%/' THEN min(first_ms) / {DAY_MS} * {DAY_MS} END AS d0"
        " FROM t GROUP BY machine_id, shift HAVING min(first_ms) <= ?1 OR max(last_ms) > ?2)"
        " SELECT machine_id, CASE WHEN shift NOT LIKE '%/' THEN shift END,"
        f" {columns('sum')} FROM t WHERE NOT EXISTS"
        " (SELECT 1 FROM edge WHERE edge.machine_id = t.machine_id AND edge.shift = t.shift)"
        f" GROUP BY machine_id, shift, {by}"
        f" UNION ALL SELECT machine_id, shift, {piece} INDEXED BY state_interval_shift"
        f" WHERE (machine_id, shift) IN (SELECT {edge} WHERE d0 IS NULL)"
        f" AND end_ms > ?1 AND start_ms < ?2 AND {where} GROUP BY machine_id, shift, {by}"
        + (
            ""
            if outside is None
            else f" UNION ALL SELECT e.machine_id, NULL, {piece} JOIN edge e"
            " ON state_interval.machine_id = e.machine_id"
            f" AND start_ms >= e.d0 AND start_ms < e.d0 + {DAY_MS} WHERE state_interval.shift IS NULL"
            f" AND end_ms > ?1 AND start_ms < ?2 AND {where}{null} GROUP BY e.machine_id, {by}"
            f" UNION ALL SELECT machine_id, NULL, {piece} INDEXED BY state_interval_long_outside"
            f" WHERE machine_id IN ({among}) AND {_LONG_OUTSIDE} AND end_ms > ?1"
            f" AND start_ms < (julianday(?4) - 2440587.5) * {DAY_MS} AND {where}{null}"
            f" GROUP BY machine_id, {by}"
        )
    )


def _revised(db: Db, machine_id: str, from_ms: int) -> None:
    db.execute("INSERT INTO record_revision (machine_id, from_ms) VALUES (?, ?)", (machine_id, from_ms))


def _interval(row: tuple[Any, ...]) -> Interval:
    m, s, e, st, reason, source, job, op, shift, operator, hold, run, evidence, stop = row
    return Interval(
        m, s, e, MachineState(st), reason, source, job, op, shift, operator, hold, run, evidence, stop
    )


def said(by: str | None, via: str, changed_ms: int, note: str) -> str:
    """An operator's reason as evidence: who said it, how and when (UTC), and the note."""
    when = iso(changed_ms)
    return f"{by or 'someone'} via {via} at {when}" + (f": {note}" if note else "")


def _json(doc: dict[str, Any] | None) -> str | None:
    return None if doc is None else _compact(doc)


class RecordStore(_Record):
    """The record with what people and other systems said: dispatch lists and their versions,
    operations and what happened to them, operators, quality holds, operators' reasons (with their
    audit trail) and scrap and rework."""

    # -- dispatch and operations ---------------------------------------------------------------
    def save_dispatch(
        self,
        scope: str,
        by: str | None,
        via: str,
        ts_ms: int,
        body: str,
        ops: list[Operation],
        drop: list[tuple[str, str]],
        dropped_ms: int | None = None,
    ) -> int:
        """A new version of the dispatch list: `ops` added or changed, `drop` taken off (not started)
        at `dropped_ms` (default `ts_ms`); what was taken off is kept, for when the machine had work."""
        with self._transaction() as db:
            version = db.execute(
                "INSERT INTO dispatch_version (ts_ms, scope, by, via, body) VALUES (?, ?, ?, ?, ?)"
                " RETURNING version",
                (ts_ms, scope, by, via, body),
            ).fetchall()[0][0]
            db.executemany(
                "INSERT OR REPLACE INTO operation (job, operation, machine_id, program, quantity, sequence,"
                " part_number, ideal_cycle_ms, planned_start_ms, planned_end_ms, status, actual_start_ms,"
                " actual_end_ms, version, dispatched_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        o.job,
                        o.operation,
                        o.machine_id,
                        o.program,
                        o.quantity,
                        o.sequence,
                        o.part_number,
                        o.ideal_cycle_ms,
                        o.planned_start_ms,
                        o.planned_end_ms,
                        o.status,
                        o.actual_start_ms,
                        o.actual_end_ms,
                        version,
                        o.dispatched_ms,
                    )
                    for o in ops
                ],
            )
            db.executemany(
                "INSERT INTO dropped_operation SELECT machine_id, job, operation, dispatched_ms, ?"
                " FROM operation WHERE job = ? AND operation = ?",
                [(ts_ms if dropped_ms is None else dropped_ms, j, o) for j, o in drop],
            )
            db.executemany("DELETE FROM operation WHERE job = ? AND operation = ?", drop)
        return int(version)

    def operations(
        self,
        machine_id: str | None = None,
        job: str | None = None,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[Operation]:
        """The operations (of a machine, of a job, or these (job, operation) keys), with the parts
        counted for each and its scrap and rework: summed for those operations only, by index."""
        where, args = [], []
        if machine_id is not None:
            where.append("o.machine_id = ?")
            args.append(machine_id)
        if job is not None:
            where.append("o.job = ?")
            args.append(job)
        if keys is not None:
            if not keys:
                return []
            where.append(f"(o.job, o.operation) IN (VALUES {', '.join(['(?, ?)'] * len(keys))})")
            args += [x for key in keys for x in key]
        only = f" WHERE {' AND '.join(where)}" if where else ""  # (built from constants; values bound)
        with self._use() as db:
            rows = db.execute(
                "SELECT o.job, o.operation, o.machine_id, o.program, o.quantity, o.sequence,"  # noqa: S608
                " o.part_number, o.ideal_cycle_ms, o.planned_start_ms, o.planned_end_ms, o.status,"
                " o.actual_start_ms, o.actual_end_ms, o.dispatched_ms"
                f" FROM operation o{only} ORDER BY o.machine_id, o.sequence, o.job, o.operation",
                args,
            ).fetchall()
            counts = {
                (j, o): (made or 0)
                for j, o, made in db.execute(
                    "SELECT o.job, o.operation, sum(p.delta) FROM operation o"  # noqa: S608
                    f" JOIN part_count p ON p.job = o.job AND p.operation = o.operation{only}"
                    " GROUP BY o.job, o.operation",
                    args,
                )
            }
            quality = {
                (j, o, r): q
                for j, o, r, q in db.execute(
                    "SELECT o.job, o.operation, q.result, sum(q.quantity) FROM operation o"  # noqa: S608
                    f" JOIN quality_count q ON q.job = o.job AND q.operation = o.operation{only}"
                    " GROUP BY o.job, o.operation, q.result",
                    args,
                )
            }
        out = []
        for row in rows:
            op = Operation(*row[:10])
            op.status, op.actual_start_ms, op.actual_end_ms, op.dispatched_ms = row[10:]
            op.made = counts.get(op.key, 0)
            op.scrap = quality.get((*op.key, "scrap"), 0) + quality.get((*op.key, "fail"), 0)
            op.rework = quality.get((*op.key, "rework"), 0)
            out.append(op)
        return out

    def dispatch_version(self) -> int:
        with self._use() as db:
            return int(db.execute("SELECT coalesce(max(version), 0) FROM dispatch_version").fetchone()[0])

    def add_op_events(self, events: list[OpEvent], ops: list[Operation]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO operation_event (machine_id, ts_ms, job, operation, action, cause, by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.machine_id, e.ts, e.job, e.operation, e.action, e.cause, e.by) for e in events],
            )
            db.executemany(
                "UPDATE operation SET status = ?, actual_start_ms = ?, actual_end_ms = ?"
                " WHERE job = ? AND operation = ?",
                [(o.status, o.actual_start_ms, o.actual_end_ms, o.job, o.operation) for o in ops],
            )

    def op_events(self, machine_id: str | None = None) -> list[OpEvent]:
        with self._use() as db:
            where = " WHERE machine_id = ?" if machine_id else ""
            rows = db.execute(
                f"SELECT machine_id, ts_ms, job, operation, action, cause, by FROM operation_event{where}"  # noqa: S608
                " ORDER BY ts_ms, seq",
                (machine_id,) if machine_id else (),
            ).fetchall()
        return [OpEvent(*row) for row in rows]

    def set_pending(self, machine_id: str, pending: Pending | None) -> None:
        with self._use() as db:
            if pending is None:
                db.execute("DELETE FROM pending_confirmation WHERE machine_id = ?", (machine_id,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO pending_confirmation VALUES (?, ?, ?, ?)",
                    (machine_id, pending.ts, pending.program, json.dumps(pending.candidates)),
                )

    def pending(self, machine_id: str) -> Pending | None:
        with self._use() as db:
            row = db.execute(
                "SELECT ts_ms, program, candidates FROM pending_confirmation WHERE machine_id = ?",
                (machine_id,),
            ).fetchone()
        if row is None:
            return None
        return Pending(row[0], row[1], tuple((j, o) for j, o in json.loads(row[2])))

    # -- operators, holds, reasons, quality ----------------------------------------------------
    def add_operator_event(self, machine_id: str, ts_ms: int, operator: str | None, via: str) -> None:
        with self._use() as db:
            db.execute(
                "INSERT INTO operator_event (machine_id, ts_ms, operator, via) VALUES (?, ?, ?, ?)",
                (machine_id, ts_ms, operator, via),
            )

    def operator_events(self, machine_id: str) -> list[tuple[int, str | None]]:
        with self._use() as db:
            return list(
                db.execute(
                    "SELECT ts_ms, operator FROM operator_event WHERE machine_id = ? ORDER BY ts_ms, seq",
                    (machine_id,),
                )
            )

    def put_hold(self, hold: Hold, opened_by: str | None, closed_by: str | None) -> None:
        with self._use() as db:
            db.execute(
                "INSERT OR REPLACE INTO quality_hold VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hold.hold_id,
                    hold.machine_id,
                    hold.job,
                    hold.operation,
                    hold.opened_ms,
                    hold.closed_ms,
                    hold.note,
                    opened_by,
                    closed_by,
                ),
            )

    def holds(self) -> list[Hold]:
        with self._use() as db:
            rows = db.execute(
                "SELECT hold_id, opened_ms, closed_ms, machine_id, job, operation, note FROM quality_hold"
                " ORDER BY opened_ms"
            ).fetchall()
        return [Hold(*row) for row in rows]

    def set_reason(
        self,
        machine_id: str,
        run_start_ms: int,
        old: str | None,
        new: str,
        by: str | None,
        via: str,
        changed_ms: int,
        note: str,
    ) -> None:
        """An operator's reason for a stop (every piece of it), and the audit row that says so."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO reason_override VALUES (?, ?, ?)", (machine_id, run_start_ms, new)
            )
            db.execute(
                "INSERT INTO reason_audit"
                " (machine_id, run_start_ms, old_reason, new_reason, by, via, changed_ms, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (machine_id, run_start_ms, old, new, by, via, changed_ms, note),
            )
            db.execute(
                "UPDATE state_interval SET reason = ?, source = 'operator', evidence = ?"
                " WHERE machine_id = ? AND start_ms >= ?"
                " AND coalesce(stop_start_ms, run_start_ms, start_ms) = ?",
                (new, said(by, via, changed_ms, note), machine_id, run_start_ms, run_start_ms),
            )
            _revised(db, machine_id, run_start_ms)

    def overrides(self, machine_id: str) -> dict[int, tuple[str, str]]:
        """Stop start -> the operator's reason and who said it when (from the latest audit row)."""
        with self._use() as db:
            rows = db.execute(
                "SELECT o.run_start_ms, o.reason, a.by, a.via, a.changed_ms, a.note FROM reason_override o"
                " LEFT JOIN reason_audit a ON a.seq = (SELECT max(seq) FROM reason_audit"
                " WHERE machine_id = o.machine_id AND run_start_ms = o.run_start_ms)"
                " WHERE o.machine_id = ?",
                (machine_id,),
            ).fetchall()
        return {
            stop: (reason, said(by, via or "?", changed or 0, note or ""))
            for stop, reason, by, via, changed, note in rows
        }

    def dropped(self, machine_id: str) -> list[tuple[int | None, int]]:
        """When operations taken off the machine's list before they started had been on it."""
        with self._use() as db:
            return list(
                db.execute(
                    "SELECT dispatched_ms, dropped_ms FROM dropped_operation WHERE machine_id = ?"
                    " ORDER BY dropped_ms",
                    (machine_id,),
                )
            )

    def verdicts(self, machine_id: str) -> list[int]:
        """When inspection results (pass, fail, scrap, rework, good) were reported for the machine."""
        with self._use() as db:
            return [
                ts
                for (ts,) in db.execute(
                    "SELECT ts_ms FROM quality_count WHERE machine_id = ? ORDER BY ts_ms", (machine_id,)
                )
            ]

    def reason_audit(self, machine_id: str) -> list[tuple[int, str | None, str, str | None, str, int, str]]:
        """(stop start, old, new, by, via, when changed, note), oldest first."""
        with self._use() as db:
            return list(
                db.execute(
                    "SELECT run_start_ms, old_reason, new_reason, by, via, changed_ms, note FROM reason_audit"
                    " WHERE machine_id = ? ORDER BY seq",
                    (machine_id,),
                )
            )

    def add_quality(
        self,
        machine_id: str,
        ts_ms: int,
        op: tuple[str, str] | None,
        shift: str | None,
        result: str,
        quantity: int,
        by: str | None,
        via: str,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO quality_count"
                " (machine_id, ts_ms, job, operation, shift, result, quantity, by, via)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (machine_id, ts_ms, *(op or (None, None)), shift, result, quantity, by, via),
            )
            _revised(db, machine_id, ts_ms)

    def rejects(
        self, machine_id: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, str | None, str | None, str | None, int]]:
        """(when, job, operation, shift, quantity) of the scrap and rework reported for the machine in
        [start, end) (`fail` is scrap)."""
        with self._use() as db:
            return list(
                db.execute(
                    "SELECT ts_ms, job, operation, shift, quantity FROM quality_count"
                    " WHERE machine_id = ? AND ts_ms >= ? AND ts_ms < ?"
                    " AND result IN ('scrap', 'fail', 'rework')"
                    " ORDER BY ts_ms",
                    (machine_id, start_ms, end_ms),
                )
            )

    def counts(
        self, start_ms: int, end_ms: int
    ) -> list[tuple[str, str | None, str | None, str | None, str, int]]:
        """(machine, shift, job, operation, kind, quantity): parts made (kind `made`) and scrap, rework
        and good reports, in [start, end)."""
        with self._use() as db:
            return list(
                db.execute(
                    "SELECT machine_id, shift, job, operation, 'made', sum(delta) FROM part_count"
                    " WHERE ts_ms >= ? AND ts_ms < ? GROUP BY machine_id, shift, job, operation"
                    " UNION ALL SELECT machine_id, shift, job, operation,"
                    " CASE result WHEN 'fail' THEN 'scrap' WHEN 'pass' THEN 'good' ELSE result END,"
                    " sum(quantity)"
                    " FROM quality_count WHERE ts_ms >= ? AND ts_ms < ? GROUP BY 1, 2, 3, 4, 5"
                    " ORDER BY 1, 2, 3, 4, 5",
                    (start_ms, end_ms, start_ms, end_ms),
                )
            )

    # -- OEE (services/oee/): read-only, every machine of a window in one pass ----------------------
    def oee_time(
        self,
        machines: Iterable[str],
        start_ms: int,
        end_ms: int,
        *,
        by_operation: bool,
        by_start: bool,
        running_outside: bool,
    ) -> list[tuple[str, str | None, str | None, str | None, str, str | None, int, int | None]]:
        """Closed record time of the machines in [start, end), clipped: (machine, shift, job, operation,
        state, reason, ms, start) summed by machine, shift, state and reason (and job and operation
        with `by_operation`; else they are None). Outside every shift (shift NULL) only running time
        with `running_outside`, and with `by_start` one row a piece (with its start, for its day)."""
        ids = list(machines)
        op = "job, operation" if by_operation else "NULL, NULL"
        summed_op = "nullif(job, ''), nullif(operation, '')" if by_operation else "NULL, NULL"
        group_op = "job, operation, " if by_operation else ""
        among = ", ".join(f"?{6 + n}" for n in range(len(ids)))
        clipped = "sum(min(end_ms, ?2) - max(start_ms, ?1))"
        piece = "CASE WHEN ?3 THEN max(start_ms, ?1) END"
        clipped_op = "job, operation" if by_operation else "NULL, NULL"

        def columns(kind: str) -> str:
            if kind == "sum":
                return f"{summed_op}, state, nullif(reason, ''), sum(ms), NULL"
            return f"{clipped_op}, state, reason, {clipped}, NULL"

        # the values are bound. Shift keys begin with their date
        running = "state = 'running'" if running_outside else "TRUE"
        in_shifts = _summed(among, columns, f"{group_op}state, reason", "TRUE", None if by_start else running)
        outside = (
            f"SELECT machine_id, NULL, {op}, state, reason, {clipped}, {piece}"  # noqa: S608
            " FROM state_interval INDEXED BY state_interval_end"
            f" WHERE machine_id IN ({among}) AND end_ms > ?1 AND start_ms < ?2 AND shift IS NULL"
            + (" AND state = 'running'" if running_outside else "")
            + f" GROUP BY machine_id, {group_op}state, reason, {piece}"
        )
        args = (start_ms, end_ms, by_start, *_shift_days(start_ms, end_ms), *ids)
        with self._use() as db:
            rows = db.execute(in_shifts, args).fetchall()
            return rows + db.execute(outside, args).fetchall() if by_start else rows

    def oee_parts(
        self, machines: Iterable[str], start_ms: int, end_ms: int, *, by_start: bool
    ) -> list[tuple[str, str | None, str | None, str | None, int, int | None]]:
        """Parts made by the machines in [start, end): (machine, shift, job, operation, parts, when)
        summed by machine, shift, job and operation; outside every shift, with `by_start`, one row a
        count (for its day)."""
        ids = list(machines)
        among = ", ".join(f"?{6 + n}" for n in range(len(ids)))
        in_shifts = (  # built from constants; the values are bound
            "SELECT machine_id, shift, job, operation, sum(delta), NULL"  # noqa: S608
            " FROM part_count INDEXED BY part_count_shift"
            f" WHERE machine_id IN ({among}) AND shift >= ?4 AND shift < ?5 AND ts_ms >= ?1 AND ts_ms < ?2"
            " GROUP BY machine_id, shift, job, operation"
        )
        when = "CASE WHEN ?3 THEN ts_ms END"
        outside = (
            f"SELECT machine_id, NULL, job, operation, sum(delta), {when}"  # noqa: S608
            " FROM part_count"  # by machine and time (the primary key), not by shift: `+shift`
            f" WHERE machine_id IN ({among}) AND ts_ms >= ?1 AND ts_ms < ?2 AND +shift IS NULL"
            f" GROUP BY machine_id, job, operation, {when}"
        )
        args = (start_ms, end_ms, by_start, *_shift_days(start_ms, end_ms), *ids)
        with self._use() as db:
            return [*db.execute(in_shifts, args), *db.execute(outside, args)]

    def oee_rejects(
        self, machines: Iterable[str], start_ms: int, end_ms: int
    ) -> list[tuple[str, int, str | None, str | None, str | None, int, int, int]]:
        """Scrap and rework reported for the machines in [start, end) (`fail` is scrap): (machine,
        when, job, operation, shift, quantity, parts the operation had made by then, parts of it
        rejected in earlier reports), in time order."""
        ids = list(machines)
        rejected = "result IN ('scrap', 'fail', 'rework')"
        sql = (  # built from constants; the values are bound
            "SELECT q.machine_id, q.ts_ms, q.job, q.operation, q.shift, q.quantity,"  # noqa: S608
            " CASE WHEN q.job IS NULL THEN 0 ELSE coalesce((SELECT sum(p.delta) FROM part_count p"
            "  WHERE p.machine_id = q.machine_id AND p.job = q.job AND p.operation = q.operation"
            "  AND p.ts_ms <= q.ts_ms), 0) END,"
            " CASE WHEN q.job IS NULL THEN 0 ELSE coalesce((SELECT sum(e.quantity) FROM quality_count e"
            f"  WHERE e.job = q.job AND e.operation = q.operation AND {rejected}"
            "  AND (e.ts_ms < q.ts_ms OR (e.ts_ms = q.ts_ms AND e.seq < q.seq))), 0) END"
            f" FROM quality_count q WHERE q.machine_id IN ({', '.join('?' * len(ids))})"
            f" AND q.ts_ms >= ? AND q.ts_ms < ? AND q.{rejected} ORDER BY q.ts_ms, q.seq"
        )
        with self._use() as db:
            return db.execute(sql, (*ids, start_ms, end_ms)).fetchall()

    def operation_ideals(self) -> dict[tuple[str, str], tuple[str, str, int | None]]:
        """(job, operation) -> (machine, part number, the dispatch list's ideal cycle ms) of every
        operation on the list."""
        with self._use() as db:
            rows = db.execute(
                "SELECT job, operation, machine_id, part_number, ideal_cycle_ms FROM operation"
            ).fetchall()
        return {(j, o): (m, part, ideal) for j, o, m, part, ideal in rows}

    def operation_cycles(
        self, operations: Iterable[tuple[str, str, str]]
    ) -> dict[
        tuple[str, str, str], tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]
    ]:
        """For each (machine, job, operation): its part counts (when, parts), its closed running
        intervals and its comms_loss intervals (start, end), each in time order: what its cycles are
        made of. (One row an operation, its numbers joined: tens of thousands of rows cost more to fetch.)"""
        out: dict[
            tuple[str, str, str], tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]
        ] = {}
        jobs: dict[str, set[str]] = {}
        for m, j, o in operations:
            out[m, j, o] = ([], [], [])
            jobs.setdefault(m, set()).add(j)
        joined = ", ".join(
            f"group_concat(CASE WHEN state = '{st}' THEN {col} END)"
            for st in ("running", "comms_loss")
            for col in ("start_ms", "end_ms")
        )
        with self._use() as db:
            for m, of_machine in jobs.items():
                listed = sorted(of_machine)
                for n in range(0, len(listed), 500):  # SQLite's limit of bound values
                    chunk = listed[n : n + 500]
                    among = ", ".join("?" * len(chunk))
                    counts = db.execute(
                        "SELECT job, operation, group_concat(ts_ms), group_concat(delta)"  # noqa: S608
                        " FROM part_count INDEXED BY part_count_operation"
                        f" WHERE machine_id = ? AND job IN ({among}) GROUP BY job, operation",
                        (m, *chunk),
                    ).fetchall()
                    spans = db.execute(
                        f"SELECT job, operation, {joined}"  # noqa: S608
                        " FROM state_interval INDEXED BY state_interval_operation"
                        f" WHERE machine_id = ? AND job IN ({among}) AND state IN ('running', 'comms_loss')"
                        " GROUP BY job, operation",
                        (m, *chunk),
                    ).fetchall()
                    for j, o, ts, deltas in counts:
                        if (m, j, o) in out:
                            out[m, j, o][0].extend(_pairs(ts, deltas))
                    for j, o, run_from, run_to, lost_from, lost_to in spans:
                        if (m, j, o) in out:
                            out[m, j, o][1].extend(_pairs(run_from, run_to))
                            out[m, j, o][2].extend(_pairs(lost_from, lost_to))
        return out

    def change_marks(self) -> tuple[int, int, int]:
        """(last revision, newest part count row, newest interval row): readers that keep what they
        derived from the record compare these to see whether anything was added or rewritten."""
        with self._use() as db:
            row = db.execute(
                "SELECT (SELECT coalesce(max(seq), 0) FROM record_revision),"
                " (SELECT coalesce(max(rowid), 0) FROM part_count),"
                " (SELECT coalesce(max(rowid), 0) FROM state_interval)"
            ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def operations_written_since(self, part_row: int, interval_row: int) -> set[tuple[str, str, str]]:
        """(machine, job, operation) of the part counts and intervals written after those rows
        (`change_marks`)."""
        with self._use() as db:
            rows = db.execute(
                "SELECT machine_id, job, operation FROM part_count WHERE rowid > ? AND job IS NOT NULL"
                " UNION SELECT machine_id, job, operation FROM state_interval"
                " WHERE rowid > ? AND job IS NOT NULL",
                (part_row, interval_row),
            ).fetchall()
        return {(m, j, o) for m, j, o in rows}

    def operation_time(self, job: str, operation: str) -> tuple[dict[str, float], dict[str, float], int]:
        """Seconds of record time by state and stopped seconds by reason while the operation ran, and
        how often it was interrupted (stops that began while it ran, and pauses)."""
        with self._use() as db:
            rows = db.execute(
                "SELECT state, reason, sum(end_ms - start_ms)"
                " FROM state_interval WHERE job = ? AND operation = ? GROUP BY state, reason",
                (job, operation),
            ).fetchall()
            stops = db.execute(
                "SELECT count(DISTINCT coalesce(stop_start_ms, run_start_ms, start_ms)) FROM state_interval"
                " WHERE job = ? AND operation = ? AND state != 'running'",
                (job, operation),
            ).fetchone()[0]
            pauses = db.execute(
                "SELECT count(*) FROM operation_event WHERE job = ? AND operation = ? AND action = 'pause'",
                (job, operation),
            ).fetchone()[0]
        by_state: dict[str, float] = {}
        by_reason: dict[str, float] = {}
        for state, reason, total in rows:
            by_state[state] = by_state.get(state, 0.0) + total / 1000
            if state != MachineState.RUNNING.value:
                by_reason[reason or "none"] = by_reason.get(reason or "none", 0.0) + total / 1000
        return by_state, by_reason, int(stops) + int(pauses)

    # reports (services/api/review.py, planner.py) ------------------------------------------------
    def made_by_machine(
        self, machines: Iterable[str], start_ms: int, end_ms: int
    ) -> dict[str, tuple[int, int]]:
        """Parts made (the counter's increments) and rejected (scrap, fail and rework reported) by each
        of the machines in [start, end), read by machine and time (the primary key)."""
        ids = list(machines)
        among = ", ".join("?" * len(ids))
        out = dict.fromkeys(ids, (0, 0))
        with self._use() as db:
            made = db.execute(
                f"SELECT machine_id, sum(delta) FROM part_count WHERE machine_id IN ({among})"  # noqa: S608
                " AND ts_ms >= ? AND ts_ms < ? GROUP BY machine_id",
                (*ids, start_ms, end_ms),
            ).fetchall()
            rejected = db.execute(
                f"SELECT machine_id, sum(quantity) FROM quality_count WHERE machine_id IN ({among})"  # noqa: S608
                " AND ts_ms >= ? AND ts_ms < ? AND result IN ('scrap', 'fail', 'rework') GROUP BY machine_id",
                (*ids, start_ms, end_ms),
            ).fetchall()
        for m, n in made:
            out[m] = (int(n), 0)
        for m, n in rejected:
            out[m] = (out[m][0], int(n))
        return out

    def stops_with_reason(
        self, machines: Iterable[str], reason: str, start_ms: int, end_ms: int
    ) -> list[tuple[str, int, int, int, str, str | None, str | None, str | None]]:
        """Closed pieces of stops with this reason overlapping [start, end) on the machines, not
        clipped: (machine, start, end, the stop's start, state, shift, job, operation), by machine
        and time."""
        ids = list(machines)
        among = ", ".join("?" * len(ids))
        with self._use() as db:
            rows = db.execute(
                "SELECT machine_id, start_ms, end_ms, coalesce(stop_start_ms, run_start_ms, start_ms),"  # noqa: S608
                " state, shift, job, operation FROM state_interval INDEXED BY state_interval_end"
                f" WHERE machine_id IN ({among}) AND end_ms > ? AND start_ms < ? AND reason = ?"
                " AND state != 'running' ORDER BY machine_id, start_ms",
                (*ids, start_ms, end_ms, reason),
            ).fetchall()
        return [(m, a, b, stop, state, shift, job, op) for m, a, b, stop, state, shift, job, op in rows]

    def stopped_by_shift(
        self, machines: Iterable[str], start_ms: int, end_ms: int
    ) -> tuple[
        list[tuple[str, str | None, str, str | None, int, int, int]],
        list[tuple[str, int, int, str, str | None, int]],
    ]:
        """Stopped (not running) closed time of the machines in [start, end), clipped, for the
        downtime report: (machine, shift, state, reason, ms, stops, first piece's start) summed by
        machine, shift, state and reason, a stop counted in the piece that holds its start (or the
        window's start, for a stop that began before it), for the machines whose record names the
        shifts in the window (a piece without one is outside every shift, as OEE counts it); and the
        pieces of the other machines (a record written without a shift calendar), for the caller to
        cut at shifts: (machine, start, end, state, reason, the stop's start), in time order."""
        ids = list(machines)
        day_from, day_to = _shift_days(start_ms, end_ms)
        stop = "coalesce(stop_start_ms, run_start_ms, start_ms)"
        with self._use() as db:
            keyed = [
                m
                for m in ids
                if db.execute(
                    "SELECT 1 FROM state_interval INDEXED BY state_interval_shift WHERE machine_id = ?"
                    " AND shift >= ? AND shift < ? AND end_ms > ? AND start_ms < ? LIMIT 1",
                    (m, day_from, day_to, start_ms, end_ms),
                ).fetchone()
            ]
            other = [m for m in ids if m not in set(keyed)]
            summed = []
            if keyed:
                among = ", ".join(f"?{6 + n}" for n in range(len(keyed)))
                counted = f"max({stop}, ?1)"  # a stop counts in the piece holding its start

                def columns(kind: str) -> str:
                    if kind == "sum":
                        return "state, nullif(reason, ''), sum(ms), sum(stops), min(first_ms)"
                    return (
                        "state, reason, sum(min(end_ms, ?2) - max(start_ms, ?1)),"
                        f" sum(CASE WHEN {counted} >= start_ms AND {counted} < end_ms THEN 1 ELSE 0 END),"
                        " min(max(start_ms, ?1))"
                    )

                summed = db.execute(
                    _summed(among, columns, "state, reason", "state != 'running'", "TRUE"),
                    (start_ms, end_ms, None, day_from, day_to, *keyed),
                ).fetchall()
            pieces = []
            if other:
                among = ", ".join(f"?{3 + n}" for n in range(len(other)))
                pieces = db.execute(
                    f"SELECT machine_id, start_ms, end_ms, state, reason, {stop} FROM state_interval"  # noqa: S608
                    f" WHERE machine_id IN ({among}) AND end_ms > ?1 AND start_ms < ?2 AND state != 'running'"
                    " ORDER BY machine_id, start_ms",
                    (start_ms, end_ms, *other),
                ).fetchall()
        return summed, pieces

    def report_operations(
        self, machines: Iterable[str], start_ms: int, end_ms: int, job: str | None = None
    ) -> list[Operation]:
        """The operations of the machines (of one job) that are open (planned, active, paused) or were
        planned or worked in [start, end), with their parts made, scrap and rework (read for these
        operations only, by machine, job and operation)."""
        ids = list(machines)
        among = ", ".join("?" * len(ids))
        of_job = " AND o.job = ?" if job is not None else ""
        made = (
            "coalesce((SELECT sum(p.delta) FROM part_count p INDEXED BY part_count_operation"
            " WHERE p.machine_id = o.machine_id AND p.job = o.job AND p.operation = o.operation), 0)"
        )
        rejected = (
            "coalesce((SELECT sum(q.quantity) FROM quality_count q WHERE q.job = o.job"
            " AND q.operation = o.operation AND q.result IN ({})), 0)"
        )
        scrap, rework = rejected.format("'scrap', 'fail'"), rejected.format("'rework'")
        sql = (  # built from constants; the values are bound
            "SELECT o.job, o.operation, o.machine_id, o.program, o.quantity, o.sequence, o.part_number,"  # noqa: S608
            " o.ideal_cycle_ms, o.planned_start_ms, o.planned_end_ms, o.status, o.actual_start_ms,"
            f" o.actual_end_ms, o.dispatched_ms, {made}, {scrap}, {rework}"
            f" FROM operation o WHERE o.machine_id IN ({among}){of_job}"
            " AND (o.status IN ('planned', 'active', 'paused')"
            "  OR (o.planned_start_ms < ? AND o.planned_end_ms >= ?)"
            "  OR (o.actual_start_ms < ? AND coalesce(o.actual_end_ms, ?) >= ?))"
            " ORDER BY o.machine_id, o.sequence, o.job, o.operation"
        )
        args = (*ids, *([job] if job is not None else []), end_ms, start_ms, end_ms, end_ms, start_ms)
        with self._use() as db:
            rows = db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            op = Operation(*row[:10])
            op.status, op.actual_start_ms, op.actual_end_ms, op.dispatched_ms = row[10:14]
            op.made, op.scrap, op.rework = row[14:]
            out.append(op)
        return out

    def held(self, hold_id: str) -> tuple[dict[str, float], list[str]]:
        """Seconds each machine stood under a hold, and the job/operations it held up."""
        with self._use() as db:
            rows = db.execute(
                "SELECT machine_id, job, operation, sum(end_ms - start_ms) FROM state_interval"
                " WHERE hold = ? AND state != 'running' GROUP BY machine_id, job, operation",
                (hold_id,),
            ).fetchall()
        machines: dict[str, float] = {}
        for machine_id, _, _, total in rows:
            machines[machine_id] = machines.get(machine_id, 0.0) + total / 1000
        return machines, sorted({f"{j}/{o}" for _, j, o, _ in rows if j is not None})

    # exports (services/api/exports.py) ------------------------------------------------------------
    # Each export reads the record a page at a time (keyset pagination where an index serves it, a
    # cursor read with fetchmany where none does), from a read-only connection of its own in one read
    # transaction: one consistent record however long the export takes, and the writer's lock is never
    # held while the API sends. Nothing of a range is ever held whole.
    @contextlib.contextmanager
    def _export_snapshot(self) -> Iterator[Db]:
        db = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        try:
            db.execute("BEGIN")  # WAL: the snapshot is taken at the first read and kept until the end
            yield db
        finally:
            db.close()

    def export_intervals(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[list[Interval]]:
        """Closed intervals that overlap [start, end), whole (not clipped), with their context and the
        story where the record keeps one; by machine in the order given, then by start."""
        sql = (
            f"SELECT {_INTERVAL_COLUMNS}, story FROM state_interval"  # noqa: S608 (constants)
            " WHERE machine_id = ? AND start_ms > ? AND start_ms < ? AND end_ms > ? ORDER BY start_ms LIMIT ?"
        )
        with self._export_snapshot() as db:
            for machine_id in machines:
                first = db.execute(  # a machine's intervals do not overlap: the first to end begins first
                    "SELECT start_ms FROM state_interval INDEXED BY state_interval_end"
                    " WHERE machine_id = ? AND end_ms > ? ORDER BY end_ms LIMIT 1",
                    (machine_id, start_ms),
                ).fetchone()
                after = None if first is None else first[0] - 1
                while after is not None:
                    rows = db.execute(sql, (machine_id, after, end_ms, start_ms, page)).fetchall()
                    after = rows[-1][1] if len(rows) == page else None
                    out = [self._exported(row) for row in rows]
                    del rows  # one page at a time: not this one's rows while the next is read
                    if out:
                        yield out
                    del out

    @staticmethod
    def _exported(row: tuple[Any, ...]) -> Interval:
        m, s, e, st, reason, source, job, op, shift, who, hold, run, evidence, stop, story = row
        told = Story.from_json(json.loads(story)) if story else None
        return Interval(
            m, s, e, MachineState(st), reason, source, job, op, shift, who, hold, run, evidence, stop, told
        )

    def export_counts(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[
        list[
            tuple[str, int, str, int, int | None, str | None, str | None, str | None, str | None, str | None]
        ]
    ]:
        """Part counts and quality reports in [start, end): (machine, when, kind, quantity, counter,
        job, operation, shift, by, via). Kind `made` is a part count (with the machine's counter; by
        and via NULL); the others are reports as they were made (scrap, rework, good, pass, fail; no
        counter). By machine id, then time (a count before a report at the same moment)."""
        import heapq

        ids = sorted(set(machines))
        among = ", ".join("?" * len(ids))
        made_sql = (
            "SELECT machine_id, ts_ms, 'made', delta, counter, job, operation, shift, NULL, NULL"
            " FROM part_count WHERE machine_id = ? AND ts_ms >= ? AND ts_ms < ?"
            " AND ts_ms >= ? AND (ts_ms > ? OR counter > ?) ORDER BY ts_ms, counter LIMIT ?"
        )
        reports_sql = (  # no index by machine and time: one sorted read, fetched a page at a time
            "SELECT machine_id, ts_ms, result, quantity, NULL, job, operation, shift, by, via"  # noqa: S608
            f" FROM quality_count WHERE machine_id IN ({among}) AND ts_ms >= ? AND ts_ms < ?"
            " ORDER BY machine_id, ts_ms, seq"
        )

        def made(db: Db) -> Iterator[Any]:
            for machine_id in ids:
                last: tuple[int, int] | None = (start_ms - 1, 0)
                while last is not None:
                    args = (machine_id, start_ms, end_ms, last[0], last[0], last[1], page)
                    rows = db.execute(made_sql, args).fetchall()
                    yield from rows
                    last = (rows[-1][1], rows[-1][4]) if len(rows) == page else None

        def reports(db: Db) -> Iterator[Any]:
            cursor = db.execute(reports_sql, (*ids, start_ms, end_ms))
            while rows := cursor.fetchmany(page):
                yield from rows

        with self._export_snapshot() as db:
            out = []
            for row in heapq.merge(made(db), reports(db), key=lambda r: (r[0], r[1])):  # stable: made first
                out.append(row)
                if len(out) == page:
                    yield out
                    out = []
            if out:
                yield out

    def export_operations(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Dispatched operations that ran in [start, end) (their actual start to end, or to now while
        they run, overlaps it) or, not started, were planned in it: (machine, job, operation, part
        number, program, sequence, quantity, ideal cycle ms, status, planned start, planned end,
        dispatched, actual start, actual end, parts made, parts made in the range, scrap, rework),
        by job and operation. Parts made count the operation's part counts on its machine; scrap
        (with `fail`) and rework the quality reports of the operation."""
        ids = sorted(set(machines))
        made = (
            "(SELECT coalesce(sum(p.delta), 0) FROM part_count p INDEXED BY part_count_operation"
            " WHERE p.machine_id = o.machine_id AND p.job = o.job AND p.operation = o.operation"
        )
        # ?1 start, ?2 end, ?3 page, ?4 and ?5 the last job and operation of the page before, ?6... machines
        base = (  # built from constants; the values are bound
            "SELECT o.machine_id, o.job, o.operation, o.part_number, o.program, o.sequence, o.quantity,"  # noqa: S608
            " o.ideal_cycle_ms, o.status, o.planned_start_ms, o.planned_end_ms, o.dispatched_ms,"
            f" o.actual_start_ms, o.actual_end_ms, {made}), {made} AND p.ts_ms >= ?1 AND p.ts_ms < ?2)"
            f" FROM operation o WHERE o.machine_id IN ({', '.join(f'?{6 + n}' for n in range(len(ids)))})"
            " AND ((o.actual_start_ms < ?2 AND coalesce(o.actual_end_ms, ?1 + 1) > ?1)"
            " OR (o.actual_start_ms IS NULL AND o.planned_start_ms < ?2"
            " AND coalesce(o.planned_end_ms, o.planned_start_ms + 1) > ?1))"
        )
        first_sql = f"{base} ORDER BY o.job, o.operation LIMIT ?3"
        after = "AND o.job >= ?4 AND (o.job > ?4 OR o.operation > ?5)"  # keyset: after the page before
        next_sql = f"{base} {after} ORDER BY o.job, o.operation LIMIT ?3"
        with self._export_snapshot() as db:
            last: tuple[str, str] | None = None
            while True:
                sql, (job, op) = (first_sql, (None, None)) if last is None else (next_sql, last)
                rows = db.execute(sql, (start_ms, end_ms, page, job, op, *ids)).fetchall()
                if not rows:
                    return
                rejected = {
                    (j, o, kind): quantity
                    for j, o, kind, quantity in db.execute(
                        "SELECT job, operation, CASE result WHEN 'fail' THEN 'scrap' ELSE result END,"
                        " sum(quantity) FROM quality_count WHERE job >= ? AND job <= ?"
                        " AND result IN ('scrap', 'fail', 'rework') GROUP BY 1, 2, 3",
                        (rows[0][1], rows[-1][1]),
                    )
                }
                yield [
                    (
                        *row,
                        rejected.get((row[1], row[2], "scrap"), 0),
                        rejected.get((row[1], row[2], "rework"), 0),
                    )
                    for row in rows
                ]
                if len(rows) < page:
                    return
                last = (rows[-1][1], rows[-1][2])

    def export_reason_audit(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[list[tuple[int, str, int, str | None, str, str | None, str, int, str]]]:
        """Every reason change made in [start, end) (by when it was made): (seq, machine, stop start,
        old, new, by, via, when, note), in the order they were made."""
        ids = sorted(set(machines))
        sql = (  # built from constants; the values are bound
            "SELECT seq, machine_id, run_start_ms, old_reason, new_reason, by, via, changed_ms, note"  # noqa: S608
            f" FROM reason_audit WHERE seq > ? AND changed_ms >= ? AND changed_ms < ?"
            f" AND machine_id IN ({', '.join('?' * len(ids))}) ORDER BY seq LIMIT ?"
        )
        with self._export_snapshot() as db:
            after: int | None = 0
            while after is not None:
                rows = db.execute(sql, (after, start_ms, end_ms, *ids, page)).fetchall()
                if rows:
                    yield rows
                after = rows[-1][0] if len(rows) == page else None


def open_record(where: str | Path, *, wait_s: float | None = None) -> RecordStore:
    """The record at `where`: a PostgreSQL URL (`postgresql://...`: record_pg.py; tried again with
    backoff for up to `wait_s` seconds while the server cannot be reached, None: until it can) or a
    SQLite file's path."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        from services.context.record_pg import PgRecordStore

        return PgRecordStore(text, wait_s=wait_s)
    return RecordStore(where)


class RecordReader(Protocol):
    """What the record's readers (the API, the OEE engine, the historian, exports) may ask of it: the
    reads, and the API's own named tokens. The context service writes through RecordStore; nothing
    outside this module writes SQL. Both stores (SQLite here, PostgreSQL in record_pg.py) are one."""

    def current_states(self) -> list[CurrentState]: ...

    def current_state(self, machine_id: str) -> CurrentState | None: ...

    def report_operations(
        self, machines: Iterable[str], start_ms: int, end_ms: int, job: str | None = None
    ) -> list[Operation]: ...

    def operations(
        self,
        machine_id: str | None = None,
        job: str | None = None,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[Operation]: ...

    def intervals(self, machine_id: str, start_ms: int, end_ms: int) -> list[Interval]: ...

    def revisions(self, after_seq: int) -> list[tuple[int, str, int]]: ...

    def intervals_from(self, machine_id: str, start_ms: int, limit: int) -> list[Interval]: ...

    def change_marks(self) -> tuple[int, int, int]: ...

    def token(self, token_id: str) -> tuple[str, str, str, list[str], int | None, int | None] | None: ...

    def tokens(self) -> list[tuple[str, str, str, list[str], int, int | None, int | None]]: ...

    def stops_with_reason(
        self, machines: Iterable[str], reason: str, start_ms: int, end_ms: int
    ) -> list[tuple[str, int, int, int, str, str | None, str | None, str | None]]: ...

    def stopped_by_shift(
        self, machines: Iterable[str], start_ms: int, end_ms: int
    ) -> tuple[
        list[tuple[str, str | None, str, str | None, int, int, int]],
        list[tuple[str, int, int, str, str | None, int]],
    ]: ...

    def signal_events(
        self, machine_id: str, from_ms: int, limit: int
    ) -> list[tuple[int, str, Value | None]]: ...

    def reason_audit(
        self, machine_id: str
    ) -> list[tuple[int, str | None, str, str | None, str, int, str]]: ...

    def parts(self, machine_id: str, start_ms: int, end_ms: int) -> list[PartsMade]: ...

    def operations_written_since(self, part_row: int, interval_row: int) -> set[tuple[str, str, str]]: ...

    def operation_time(self, job: str, operation: str) -> tuple[dict[str, float], dict[str, float], int]: ...

    def operation_ideals(self) -> dict[tuple[str, str], tuple[str, str, int | None]]: ...

    def operation_cycles(
        self, operations: Iterable[tuple[str, str, str]]
    ) -> dict[
        tuple[str, str, str], tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]
    ]: ...

    def oee_time(
        self,
        machines: Iterable[str],
        start_ms: int,
        end_ms: int,
        *,
        by_operation: bool,
        by_start: bool,
        running_outside: bool,
    ) -> list[tuple[str, str | None, str | None, str | None, str, str | None, int, int | None]]: ...

    def oee_rejects(
        self, machines: Iterable[str], start_ms: int, end_ms: int
    ) -> list[tuple[str, int, str | None, str | None, str | None, int, int, int]]: ...

    def oee_parts(
        self, machines: Iterable[str], start_ms: int, end_ms: int, *, by_start: bool
    ) -> list[tuple[str, str | None, str | None, str | None, int, int | None]]: ...

    def made_by_machine(
        self, machines: Iterable[str], start_ms: int, end_ms: int
    ) -> dict[str, tuple[int, int]]: ...

    def last_revision(self) -> int: ...

    def holds(self) -> list[Hold]: ...

    def held(self, hold_id: str) -> tuple[dict[str, float], list[str]]: ...

    def health(self) -> list[tuple[str, str, float | None, int]]: ...

    def export_reason_audit(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[list[tuple[int, str, int, str | None, str, str | None, str, int, str]]]: ...

    def export_operations(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[list[tuple[Any, ...]]]: ...

    def export_intervals(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[list[Interval]]: ...

    def export_counts(
        self, machines: Iterable[str], start_ms: int, end_ms: int, page: int = 5000
    ) -> Iterator[
        list[
            tuple[str, int, str, int, int | None, str | None, str | None, str | None, str | None, str | None]
        ]
    ]: ...

    def dispatch_version(self) -> int: ...

    def data_version(self) -> int: ...

    def counts(
        self, start_ms: int, end_ms: int
    ) -> list[tuple[str, str | None, str | None, str | None, str, int]]: ...

    def add_token(
        self,
        token_id: str,
        digest: str,
        name: str,
        role: str,
        scope: list[str],
        issued_ms: int,
        expires_ms: int | None,
    ) -> None: ...

    def answers(self) -> bool: ...

    def schema_version(self) -> int: ...

    def overrides(self, machine_id: str) -> dict[int, tuple[str, str]]: ...

    def dropped(self, machine_id: str) -> list[tuple[int | None, int]]: ...

    def verdicts(self, machine_id: str) -> list[int]: ...

    def rejects(
        self, machine_id: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, str | None, str | None, str | None, int]]: ...

    def op_events(self, machine_id: str | None = None) -> list[OpEvent]: ...

    def pending(self, machine_id: str) -> Pending | None: ...

    def operator_events(self, machine_id: str) -> list[tuple[int, str | None]]: ...

    def applied(self, command_id: str) -> str | None: ...
