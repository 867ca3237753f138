"""What the historian has written: where it is in the record, and the series of its recent points
(so that a correction about the past can take back a point whose tags it changed). Its own SQLite
file beside the record; the record itself is only read.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    machine_id   TEXT PRIMARY KEY,
    interval_ms  INTEGER NOT NULL,  -- closed intervals that start after this are new
    part_ms      INTEGER NOT NULL,  -- part counts after this are new
    signal_ms    INTEGER NOT NULL,  -- signal values from this on were read
    oee_ms       INTEGER NOT NULL   -- the OEE of shifts that end after this is to be written
);
CREATE TABLE IF NOT EXISTS meta (
    key          TEXT PRIMARY KEY,
    value        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS written (
    machine_id   TEXT NOT NULL,
    measurement  TEXT NOT NULL,
    ts_ms        INTEGER NOT NULL,
    series       TEXT NOT NULL,
    PRIMARY KEY (machine_id, measurement, ts_ms)
);
"""


@dataclass(slots=True)
class Cursor:
    interval_ms: int = -1
    part_ms: int = -1
    signal_ms: int = 0
    oee_ms: int = 0


class Memory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def cursors(self) -> dict[str, Cursor]:
        with self._lock:
            rows = self._db.execute("SELECT machine_id, interval_ms, part_ms, signal_ms, oee_ms FROM cursor")
            return {m: Cursor(i, p, s, o) for m, i, p, s, o in rows}

    def revision(self) -> int | None:
        """The last record revision handled (None: a new memory, nothing written yet)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return None if row is None else int(row[0])

    def save(
        self,
        cursors: dict[str, Cursor],
        revision: int,
        written: Iterable[tuple[str, str, int, str]],
        forget_before_ms: int,
    ) -> None:
        """Cursors, the revision handled and the series of what was written (machine, measurement,
        time, series), in one transaction; series older than `forget_before_ms` are forgotten."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO cursor VALUES (?, ?, ?, ?, ?)",
                [(m, c.interval_ms, c.part_ms, c.signal_ms, c.oee_ms) for m, c in cursors.items()],
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (revision,))
            db.executemany("INSERT OR REPLACE INTO written VALUES (?, ?, ?, ?)", list(written))
            db.execute("DELETE FROM written WHERE ts_ms < ?", (forget_before_ms,))
            db.execute("COMMIT")

    def written(self, machine_id: str, from_ms: int, to_ms: int) -> dict[tuple[str, int], str]:
        """(measurement, time) -> series of the points written for a machine in [from, to]."""
        with self._lock:
            rows = self._db.execute(
                "SELECT measurement, ts_ms, series FROM written"
                " WHERE machine_id = ? AND ts_ms >= ? AND ts_ms <= ?",
                (machine_id, from_ms, to_ms),
            ).fetchall()
        return {(measurement, ts): series for measurement, ts, series in rows}
