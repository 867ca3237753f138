"""The bridge's store-and-forward buffer: what it sampled while it could not publish, on disk.

SQLite (WAL), one file per edge node, so a killed bridge loses nothing it had written. Each row is a
device's whole set of values at one moment (a snapshot), so dropping the oldest rows when the buffer
is full never leaves a row that depends on a dropped one. Bounded by row count and by age; what is
dropped is counted. The file also keeps the edge node's last bdSeq across restarts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from uns.sparkplug.edge import Sample

SCHEMA = """
CREATE TABLE IF NOT EXISTS row (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    device   TEXT NOT NULL,
    ts_ms    INTEGER NOT NULL,
    samples  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS row_ts ON row (ts_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    device: str
    ts_ms: int
    samples: list[Sample]


class DiskBuffer:
    def __init__(
        self, path: str | Path, *, max_rows: int = 1_000_000, max_age_ms: int = 7 * 24 * 3600_000
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.max_age_ms = max_age_ms
        # used from the asyncio loop and (for bdSeq, before every CONNECT) paho's thread
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a committed row survives the process being killed; only an OS crash or power
        # loss can take the last few commits (an fsync per sample would cap us at ~200 rows/s)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.depth = self._db.execute("SELECT count(*) FROM row").fetchone()[0]
        self._oldest = self._db.execute("SELECT min(ts_ms) FROM row").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _meta(self, key: str, default: int = 0) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def dropped(self) -> int:
        return self._meta("dropped")

    @property
    def last_bdseq(self) -> int:
        return self._meta("bdseq", 255)

    @last_bdseq.setter
    def last_bdseq(self, value: int) -> None:
        self._set_meta("bdseq", value)

    def host_state_ts(self, host_id: str) -> int:
        """The timestamp of the online STATE of `host_id` this node last trusted (-1: none)."""
        return self._meta(f"host_state_ts:{host_id}", -1)

    def set_host_state_ts(self, host_id: str, ts: int) -> None:
        self._set_meta(f"host_state_ts:{host_id}", ts)

    def oldest_ms(self) -> int | None:
        with self._lock:
            if self._oldest is None and self.depth:
                self._oldest = self._db.execute("SELECT min(ts_ms) FROM row").fetchone()[0]
            return None if self._oldest is None else int(self._oldest)

    def devices(self) -> set[str]:
        """Devices with buffered rows."""
        with self._lock:
            return {d for (d,) in self._db.execute("SELECT DISTINCT device FROM row")}

    def append(self, rows: list[tuple[str, int, list[Sample]]]) -> None:
        """Add snapshots (device, time, values) in order; then drop what is too old or too many."""
        if not rows:
            return
        encoded = [
            (device, ts, json.dumps([[s.name, s.value, s.timestamp, s.quality] for s in samples]))
            for device, ts, samples in rows
        ]
        newest = max(ts for _, ts, _ in rows)
        oldest_new = min(ts for _, ts, _ in rows)
        with self._lock:
            db = self._db
            if self._oldest is None and self.depth:
                self._oldest = db.execute("SELECT min(ts_ms) FROM row").fetchone()[0]
            db.execute("BEGIN")
            db.executemany("INSERT INTO row (device, ts_ms, samples) VALUES (?, ?, ?)", encoded)
            self.depth += len(rows)
            self._oldest = oldest_new if self._oldest is None else min(self._oldest, oldest_new)
            dropped = 0
            if self._oldest < newest - self.max_age_ms:
                dropped += db.execute("DELETE FROM row WHERE ts_ms < ?", (newest - self.max_age_ms,)).rowcount
                self._oldest = None  # found again when asked
            if self.depth - dropped > self.max_rows:
                dropped += db.execute(
                    "DELETE FROM row WHERE id IN (SELECT id FROM row ORDER BY id LIMIT ?)",
                    (self.depth - dropped - self.max_rows,),
                ).rowcount
                self._oldest = None
            if dropped:
                self.depth -= dropped
                db.execute(
                    "INSERT INTO meta VALUES ('dropped', ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
                    (dropped, dropped),
                )
            db.execute("COMMIT")

    def peek(self, devices: set[str], limit: int = 200) -> list[Row]:
        """The oldest rows of these devices, in the order they were written."""
        if not devices:
            return []
        marks = ",".join("?" * len(devices))
        query = f"SELECT id, device, ts_ms, samples FROM row WHERE device IN ({marks}) ORDER BY id LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(query, (*sorted(devices), limit)).fetchall()
        return [Row(i, d, ts, [Sample(*s) for s in json.loads(text)]) for i, d, ts, text in rows]

    def delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            deleted = self._db.executemany("DELETE FROM row WHERE id = ?", [(i,) for i in ids]).rowcount
            self.depth -= deleted
            self._oldest = None
